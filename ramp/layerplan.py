"""Which path runs a whole MoE layer of T tokens inside an engine: the guard.

Inside a serving engine the host knows T (the batch size a CUDA graph is captured for)
but never the histogram. A ``LayerPlan`` is the measured answer to "for T tokens, is any
RaMP path faster than the engine's own kernel, and which?": per measured token count,
the whole layer's time (routing, both GEMMs, activation, top-k reduction) of every path
timed side by side on the GPU, and the choice that follows. A path is chosen only if it
beats the engine's kernel by more than ``margin`` (timing noise) on the summary and under
every measured routing (``times_us_by_routing``: the host never knows which routing a
call has), so RaMP never makes a bucket slower than the engine on its own measurements.

Paths: ``engine`` (the engine's kernel, e.g. vLLM's Triton fused_moe with its tuned
table), ``triton`` (RaMP's Triton family, the profile's per-T configuration),
``triton-poly`` (the sync-free polymorphic kernel: the branch is chosen on the GPU from
the live histogram), ``cute`` (RaMP's CuTe DSL sm90 family, the profiles' per-T
configuration; needs nvidia-cutlass-dsl), ``grouped_mm`` (torch._grouped_mm on
expert-sorted rows).
Eager calls (outside any CUDA graph: prefill steps beyond the engine's captured sizes,
or ``enforce_eager``) pay every launch's host time again, and vLLM's eager prefill steps
are host-bound (Qwen3-30B-A3B on the H200: GPU busy 56-61% of a prefill-heavy run's
steps), so there a path must also cost the host no more than the engine's kernel does
(``host_us``, measured per path and size), or keep the GPU busier than the host and
save more GPU time than it adds host time; a plan without host times gives every eager
call to the engine. Calls inside a graph replay without the host and take ``choices``.
A call of T tokens takes the decision of the smallest measured size >= T (engines pad a
graph's batch up to its captured size), or of the largest measured size beyond it. So a
bucket serves every size from just above the previous measured one: where the plan also
timed that smallest size (``interval_starts``), with the bucket's configuration, a path
must win there too: a tile tuned at 1,024 tokens may lose at 769.
"""

from __future__ import annotations

import bisect
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from ramp.errors import InputError
from ramp.plaindata import from_mapping, locate, read_json
from ramp.problem import MoEProblem

SCHEMA = "ramp-layer-plan/1"
ENGINE = "engine"
PATHS = (ENGINE, "triton", "triton-fused", "triton-tma", "triton-poly", "cute", "grouped_mm")
DEFAULT_MARGIN = 0.02


def beats_engine(engine_us: float, path_us: float | None, margin: float) -> bool:
    """The guard's test at one size under one routing: the path measured, and faster
    than the engine's kernel by more than ``margin``."""
    return path_us is not None and path_us < engine_us * (1 - margin)


@dataclass(frozen=True)
class LayerPlan:
    """Measured whole-layer times per token count and path, and the guarded choice."""

    gpu: str
    problem: MoEProblem                  # the layer's w13 problem (E, 2I, hidden, top-k)
    engine: str                          # what ``engine`` timed, e.g. "vllm 0.26.0"
    tokens: tuple[int, ...]              # measured token counts, ascending
    times_us: dict[str, tuple[float | None, ...]]  # path -> median us per token count
    margin: float = DEFAULT_MARGIN
    # path -> per token count, what that path ran (e.g. the Triton configurations of
    # both GEMMs), so the runtime runs exactly what was timed; opaque to the core.
    configs: dict[str, tuple[dict[str, Any] | None, ...]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # expert-parallel degree: ``problem`` is one rank's local layer, ``tokens`` the
    # step's tokens (each rank sees about tokens * top_k / ep of the rows)
    ep: int = 1
    # routing spec -> path -> median us per token count: the measurements ``times_us``
    # summarises; where given, a path must win under every routing (the host never
    # knows a call's routing, so a path that wins on average may lose on this one)
    times_us_by_routing: dict[str, dict[str, tuple[float | None, ...]]] = field(
        default_factory=dict)
    # per token count, the smallest size the engine hands that bucket when the plan timed
    # it too (null: not timed, or the measured size itself), and routing spec -> path ->
    # us per token count there, each path with the bucket's configuration
    interval_starts: tuple[int | None, ...] = ()
    interval_start_times_us_by_routing: dict[str, dict[str, tuple[float | None, ...]]] = (
        field(default_factory=dict))
    # path -> per token count, microseconds the host takes to issue one eager call (the
    # GPU held busy meanwhile): what an eager step pays for the layer on the host
    host_us: dict[str, tuple[float | None, ...]] = field(default_factory=dict)
    # RaMP's host times were measured with eager calls replayed from per-size CUDA graphs
    # (``kernels.eager_graphs``): the runtime then runs eager calls so, as measured
    eager_graphs: bool = False

    def __post_init__(self) -> None:
        if not self.tokens or list(self.tokens) != sorted(set(self.tokens)) or self.tokens[0] < 1:
            raise InputError("layer plan: 'tokens' must be ascending distinct counts >= 1")
        if ENGINE not in self.times_us:
            raise InputError(f"layer plan: 'times_us' has no {ENGINE!r} path to guard against")
        for path, times in self.times_us.items():
            if path not in PATHS:
                raise InputError(f"layer plan: unknown path {path!r} (known: {PATHS})")
            self._check_times(f"times_us[{path!r}]", times)
        for path, per_t in self.configs.items():
            if path not in self.times_us or len(per_t) != len(self.tokens):
                raise InputError(f"layer plan: configs[{path!r}] must give one entry per "
                                 "token count of a timed path")
        self._check_by_routing("times_us_by_routing", self.times_us_by_routing)
        if self.interval_starts and len(self.interval_starts) != len(self.tokens):
            raise InputError("layer plan: 'interval_starts' must give one entry per token "
                             "count (or none)")
        for i, start in enumerate(self.interval_starts):
            if start is not None and not (i > 0 and self.tokens[i - 1] < start < self.tokens[i]):
                raise InputError(f"layer plan: interval_starts[{i}] = {start} is not between "
                                 "the previous measured token count and this one")
        self._check_by_routing("interval_start_times_us_by_routing",
                               self.interval_start_times_us_by_routing)
        for path, times in self.host_us.items():
            if path not in self.times_us:
                raise InputError(f"layer plan: host_us[{path!r}] is not a path of 'times_us'")
            self._check_times(f"host_us[{path!r}]", times)
        if not 0 <= self.margin < 1:
            raise InputError(f"layer plan: margin {self.margin} must be in [0, 1)")
        if not isinstance(self.engine, str) or not self.engine.split():
            raise InputError(f"layer plan: engine {self.engine!r} must name the engine it "
                             "was measured in (e.g. 'vllm 0.26.0')")
        if isinstance(self.ep, bool) or not isinstance(self.ep, int) or not 1 <= self.ep <= 1024:
            raise InputError(f"layer plan: ep {self.ep!r} must be an int in 1..1024")

    def _check_by_routing(self, name: str,
                          table: dict[str, dict[str, tuple[float | None, ...]]]) -> None:
        """A ``routing -> path -> times`` table: paths of ``times_us``, one time each."""
        for routing, per_path in table.items():
            for path, times in per_path.items():
                where = f"{name}[{routing!r}][{path!r}]"
                if path not in self.times_us:
                    raise InputError(f"layer plan: {where} is not a path of 'times_us'")
                self._check_times(where, times)

    def _check_times(self, where: str, times: tuple[float | None, ...]) -> None:
        """One time per token count, each positive or null (not measured)."""
        if len(times) != len(self.tokens):
            raise InputError(f"layer plan: {where} has {len(times)} values for "
                             f"{len(self.tokens)} token counts")
        if any(t is not None and not t > 0 for t in times):
            raise InputError(f"layer plan: {where} must be positive or null")

    @property
    def key(self) -> str:
        ep = f"-ep{self.ep}" if self.ep > 1 else ""
        return f"{self.gpu}_{self.problem.key}{ep}_layer"

    @cached_property
    def choices(self) -> tuple[str, ...]:
        """The path of every measured token count inside a CUDA graph: the fastest path
        that beats the engine by more than ``margin``, under every routing of
        ``times_us_by_routing`` too; else the engine."""
        return tuple(self._fastest_guarded(i, lambda path: True)
                     for i in range(len(self.tokens)))

    @cached_property
    def eager_choices(self) -> tuple[str, ...]:
        """The path of every measured token count for an eager call: the fastest of the
        paths ``choices`` may take there that costs the host no more than the engine's
        kernel, or whose layer keeps the GPU busier than the host (GPU time >= host
        time) and saves more GPU time than it adds host time; else the engine (also
        wherever host times are missing). An eager step is bound by the host or by the
        GPU: the first kind of path is never slower in either, the second only loses
        in a step its own GPU work does not bound."""
        missing = (None,) * len(self.tokens)

        def eager_ok(i: int) -> Callable[[str], bool]:
            engine_host = self.host_us.get(ENGINE, missing)[i]
            engine_gpu = self.times_us[ENGINE][i]

            def ok(path: str) -> bool:
                host, gpu = self.host_us.get(path, missing)[i], self.times_us[path][i]
                if engine_host is None or host is None:
                    return False
                return host <= engine_host or (
                    gpu is not None and engine_gpu is not None and gpu >= host
                    and engine_gpu - gpu >= host - engine_host)
            return ok

        return tuple(self._fastest_guarded(i, eager_ok(i)) for i in range(len(self.tokens)))

    def _fastest_guarded(self, i: int, allowed: Callable[[str], bool]) -> str:
        """At index ``i``: the fastest ``allowed`` path beating the engine by the margin,
        on the summary and under every routing measured; else the engine."""
        engine = self.times_us[ENGINE][i]
        # an engine not timed here guards nothing: the fastest allowed path
        limit = float("inf") if engine is None else engine * (1 - self.margin)
        best, best_us = ENGINE, limit
        for path, times in self.times_us.items():
            t = times[i]
            if (path == ENGINE or t is None or not allowed(path)
                    or not self._wins_every_routing(path, i, self.times_us_by_routing)
                    or not self._wins_every_routing(
                        path, i, self.interval_start_times_us_by_routing)):
                continue
            if t < best_us:
                best, best_us = path, t
        return best

    def _wins_every_routing(self, path: str, i: int,
                            table: dict[str, dict[str, tuple[float | None, ...]]]) -> bool:
        """Whether ``path`` beats the engine by the margin at index ``i`` under every
        routing of ``table`` that timed both (vacuously where none did)."""
        for per_path in table.values():
            if ENGINE not in per_path or path not in per_path:
                continue  # this routing did not time both
            engine, t = per_path[ENGINE][i], per_path[path][i]
            if engine is not None and not beats_engine(engine, t, self.margin):
                return False
        return True

    def bucket(self, tokens: int) -> int:
        """Index of the measured token count whose decision a call of ``tokens`` takes."""
        return min(bisect.bisect_left(self.tokens, tokens), len(self.tokens) - 1)

    def choose(self, tokens: int, eager: bool = False) -> str:
        """The path for a call of ``tokens`` tokens (host-side: no device data read),
        captured in a CUDA graph or, with ``eager``, run eagerly."""
        return (self.eager_choices if eager else self.choices)[self.bucket(tokens)]

    def config(self, path: str, tokens: int) -> dict[str, Any] | None:
        """What ``path`` ran at the bucket of ``tokens`` (None: nothing recorded)."""
        per_t = self.configs.get(path)
        return None if per_t is None else per_t[self.bucket(tokens)]

    def paths_used(self) -> set[str]:
        return set(self.choices) | set(self.eager_choices)

    def without(self, paths: set[str]) -> LayerPlan:
        """This plan as if ``paths`` had never been timed: their buckets go to the next
        fastest measured path that passes the guard, else the engine. For a runtime that
        cannot run a path (a missing library) but can run the others."""
        if ENGINE in paths:
            raise InputError(f"layer plan {self.key}: the {ENGINE!r} path cannot be dropped")
        return replace(
            self,
            times_us={p: t for p, t in self.times_us.items() if p not in paths},
            configs={p: c for p, c in self.configs.items() if p not in paths},
            times_us_by_routing={r: {p: t for p, t in per.items() if p not in paths}
                                 for r, per in self.times_us_by_routing.items()},
            interval_start_times_us_by_routing={
                r: {p: t for p, t in per.items() if p not in paths}
                for r, per in self.interval_start_times_us_by_routing.items()},
            host_us={p: t for p, t in self.host_us.items() if p not in paths})

    def check_remeasure(self, tokens: tuple[int, ...], routings: tuple[str, ...],
                        eager_graphs: bool) -> None:
        """Refuse re-measured sizes ``with_remeasured`` cannot take, before or after they
        are measured (``python -m ramp.adapters.plan --remeasure`` asks before spending
        GPU time): the same eager mode and routings, consecutive sizes of this plan's."""
        where = f"layer plan {self.key}"
        if eager_graphs != self.eager_graphs:
            raise InputError(f"{where}: cannot take sizes of a plan with another "
                             f"eager_graphs ({eager_graphs!r}, this plan's "
                             f"{self.eager_graphs!r}): re-measure "
                             f"{'with' if self.eager_graphs else 'without'} --eager-graphs")
        if set(routings) != set(self.times_us_by_routing):
            raise InputError(f"{where}: the re-measured sizes have routings "
                             f"{sorted(routings)}, this plan "
                             f"{sorted(self.times_us_by_routing)} (--routings must be the "
                             f"plan's {';'.join(self.times_us_by_routing)})")
        consecutive = (f"--tokens must be consecutive sizes of the plan's "
                       f"{','.join(map(str, self.tokens))}")
        unknown = [t for t in tokens if t not in self.tokens]
        if unknown:
            raise InputError(f"{where}: sizes {unknown} are not among its measured token "
                             f"counts ({consecutive})")
        first = self.tokens.index(tokens[0])
        if self.tokens[first:first + len(tokens)] != tuple(tokens):
            raise InputError(f"{where}: the re-measured sizes {list(tokens)} skip some of "
                             f"its sizes between them ({consecutive})")

    def with_remeasured(self, other: LayerPlan) -> LayerPlan:
        """This plan with the sizes ``other`` measured replaced by ``other``'s
        measurements (every per-size field; a path only one of them timed is null at the
        other's sizes): re-measuring the sizes a new path can change costs a fraction of a
        whole plan. Both must be of one layer, GPU, engine, margin and eager mode, with
        the same routings, and ``other``'s sizes must be consecutive ones of this plan's.
        A size whose bucket start ``other`` did not time (its first, which has no smaller
        size there) keeps this plan's measurements where this plan timed that start:
        re-measure from one size below the first to change."""
        for name in ("gpu", "problem", "engine", "ep", "margin"):
            if getattr(self, name) != getattr(other, name):
                raise InputError(f"layer plan {self.key}: cannot take sizes of a plan with "
                                 f"another {name} ({getattr(other, name)!r}, this plan's "
                                 f"{getattr(self, name)!r})")
        self.check_remeasure(other.tokens, tuple(other.times_us_by_routing),
                             other.eager_graphs)
        index = {t: i for i, t in enumerate(self.tokens)}

        def start(plan: LayerPlan, i: int) -> int | None:
            return plan.interval_starts[i] if plan.interval_starts else None

        at = {index[t]: j for j, t in enumerate(other.tokens)
              if start(other, j) is not None or start(self, index[t]) is None}

        def spliced(mine: tuple | None, theirs: tuple | None) -> tuple:
            return tuple((theirs[at[i]] if theirs is not None else None) if i in at else
                         (mine[i] if mine is not None else None)
                         for i in range(len(self.tokens)))

        def per_path(mine: dict, theirs: dict) -> dict:
            return {k: spliced(mine.get(k), theirs.get(k)) for k in (*mine, *(
                k for k in theirs if k not in mine))}

        def per_routing(mine: dict, theirs: dict) -> dict:
            return {r: per_path(mine.get(r, {}), theirs.get(r, {}))
                    for r in (*mine, *(r for r in theirs if r not in mine))}

        starts = spliced(self.interval_starts or None, other.interval_starts or None)
        return replace(
            self, times_us=per_path(self.times_us, other.times_us),
            configs=per_path(self.configs, other.configs),
            times_us_by_routing=per_routing(self.times_us_by_routing,
                                            other.times_us_by_routing),
            interval_starts=starts if any(s is not None for s in starts) else (),
            interval_start_times_us_by_routing=per_routing(
                self.interval_start_times_us_by_routing,
                other.interval_start_times_us_by_routing),
            host_us=per_path(self.host_us, other.host_us),
            provenance={**self.provenance, "remeasured": [
                *self.provenance.get("remeasured", []),
                {"tokens": [self.tokens[i] for i in sorted(at)], **other.provenance}]})

    def speedup(self) -> dict[int, float]:
        """Engine time / chosen path's time per measured token count, for calls in CUDA
        graphs (>= 1 by design)."""
        out = {}
        for i, (t, path) in enumerate(zip(self.tokens, self.choices)):
            engine, chosen = self.times_us[ENGINE][i], self.times_us[path][i]
            if engine is not None and chosen is not None:
                out[t] = engine / chosen
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "gpu": self.gpu, "problem": self.problem.to_dict(),
                "ep": self.ep, "engine": self.engine, "margin": self.margin,
                "tokens": list(self.tokens),
                "times_us": {p: list(v) for p, v in self.times_us.items()},
                "choices": list(self.choices),
                "configs": {p: list(v) for p, v in self.configs.items()},
                "times_us_by_routing": {r: {p: list(v) for p, v in per_path.items()}
                                        for r, per_path in self.times_us_by_routing.items()},
                "interval_starts": list(self.interval_starts),
                "interval_start_times_us_by_routing": {
                    r: {p: list(v) for p, v in per_path.items()}
                    for r, per_path in self.interval_start_times_us_by_routing.items()},
                "host_us": {p: list(v) for p, v in self.host_us.items()},
                "eager_graphs": self.eager_graphs,
                "eager_choices": list(self.eager_choices),
                "provenance": self.provenance}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> LayerPlan:
        """A plan from its JSON object (``to_dict``), every field's type checked
        (``choices`` and ``eager_choices`` follow from the times and are not read)."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: a layer plan is a JSON object")
        if data.get("schema") != SCHEMA:
            raise InputError(locate(f"{where}: field 'schema' is {data.get('schema')!r}, "
                                    f"expected {SCHEMA!r}", data, "schema"))
        for name in ("gpu", "problem", "engine", "tokens", "times_us"):
            if name not in data:
                raise InputError(locate(f"{where}: missing field {name!r}", data))
        fields = copy.copy(data)  # a copy of what read_json read still knows its lines
        for name in ("schema", "choices", "eager_choices"):
            fields.pop(name, None)
        return from_mapping(cls, fields, where)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def load_layer_plan(path: str | Path) -> LayerPlan:
    path = Path(path)
    return LayerPlan.from_dict(read_json(path, "layer plan"), str(path))


def embedded_layer_plans() -> list[Path]:
    """Layer plans shipped with the package (measured in an engine's process on a GPU)."""
    root = resources.files("ramp") / "data" / "plans"
    if not root.is_dir():
        return []
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".json"))


def find_layer_plan(gpu: str, problem: MoEProblem, engine: str,
                    extra: list[LayerPlan] = (), ep: int = 1) -> LayerPlan | None:
    """The plan for this GPU, local layer, EP degree and engine name: ``extra`` first,
    then embedded."""
    def matches(p: LayerPlan) -> bool:
        return ((p.gpu, p.problem, p.ep) == (gpu, problem, ep)
                and p.engine.split()[:1] == [engine])

    for plan in extra:
        if matches(plan):
            return plan
    for path in embedded_layer_plans():
        plan = load_layer_plan(path)
        if matches(plan):
            return plan
    return None
