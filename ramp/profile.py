"""The profile store: fitted cost models as versioned plain data with provenance.

A profile is keyed by GPU + problem shape + kernel-family version. Measured profiles are
shipped as package data (``ramp/data/profiles``) so a fresh install works without a GPU.
Loading checks the key: a profile measured on another GPU, for another shape or an older
family version is refused with an error that names both sides.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ramp.costmodel import ModelError, WaveCostModel
from ramp.dispatch import (
    CrossFamilyDispatcher,
    Dispatcher,
    GuardedDispatcher,
    RampDispatcher,
    StaticDispatcher,
)
from ramp.errors import InputError, ProfileMismatchError
from ramp.plaindata import locate, read_json, type_name
from ramp.problem import MoEProblem

SCHEMA = "ramp-profile/1"
POLICIES = ("static", "ramp", "ramp-unguarded")
# Profiles fitted before the model error was stored carry none. The guard then assumes
# this relative error for every prediction, so RaMP leaves the static table only for a
# predicted gain above 2e/(1-e) = 10.5%: about the median (4.9%) of the per-bucket errors
# the shipped Triton profiles (H100 and H200) measure (``ModelError``; the older
# all-configuration statistic read 4.1% on the H100 ones, docs/perf/dispatcher.md).
# Refit such a profile (`ramp fit`) to store its own.
DEFAULT_MODEL_ERROR = 0.05


@dataclass
class Profile:
    """A fitted wave cost model for one (GPU, problem, kernel family) and its metadata."""

    gpu: str                      # hardware catalog key, e.g. "H100-SXM"
    problem: MoEProblem
    family: str                   # "triton", or "triton+grouped_mm" for a mixed bank
    family_version: str
    model: WaveCostModel
    static_table: dict[int, int]  # tokens bucket -> config index, tuned on uniform routing
    provenance: dict[str, Any] = field(default_factory=dict)
    model_error: ModelError | None = None  # measured at fit time; None in older profiles

    @property
    def error(self) -> ModelError:
        """The model's measured error, or DEFAULT_MODEL_ERROR for a profile without one."""
        return self.model_error or ModelError.uniform(DEFAULT_MODEL_ERROR)

    @property
    def key(self) -> str:
        return f"{self.gpu}/{self.problem.key}/{self.family}@{self.family_version}"

    def dispatcher(self, policy: str) -> Dispatcher:
        """A dispatcher of this profile's bank, one of POLICIES: ``"static"`` (the batch-size
        table), ``"ramp"`` (the default: guarded by the model's error) or
        ``"ramp-unguarded"`` (the model's argmin, whatever its margin)."""
        static = StaticDispatcher(self.static_table, self.problem.top_k, len(self.model.bank))
        if policy == "ramp":
            return GuardedDispatcher(self.model, static, self.error)
        if policy == "ramp-unguarded":
            return RampDispatcher(self.model)
        if policy == "static":
            return static
        raise InputError(f"unknown policy {policy!r}: a profile serves {POLICIES} "
                         "('oracle' needs measured times)")

    def across_families(self, others: Sequence[Profile]) -> CrossFamilyDispatcher:
        """RaMP choosing per call across this profile's family and ``others`` (profiles of
        the same problem and GPU): ``CrossFamilyDispatcher`` over the families'
        concatenated cost models. This profile comes first, because its static table,
        whose picks index the head of the combined bank, and its measured error guard the
        choice, as an engine's one batch-size table would; another family takes over only
        beyond both families' errors. ``.ramp.model`` is the combined model."""
        model = WaveCostModel.concat([self.model, *(o.model for o in others)])
        return CrossFamilyDispatcher(model, self.dispatcher("static"),
                                     [self.error, *(o.error for o in others)],
                                     [len(p.model.bank) for p in (self, *others)])

    def to_dict(self) -> dict[str, Any]:
        extra = {"model_error": self.model_error.to_dict()} if self.model_error else {}
        return {
            "schema": SCHEMA,
            "gpu": self.gpu,
            "problem": self.problem.to_dict(),
            "family": self.family,
            "family_version": self.family_version,
            "static_table": {str(k): v for k, v in sorted(self.static_table.items())},
            "provenance": self.provenance,
            **extra,
            "model": self.model.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Profile:
        if not isinstance(data, dict):
            raise InputError(f"{where}: a profile is a JSON object")
        if data.get("schema") != SCHEMA:
            raise InputError(locate(f"{where}: field 'schema' is {data.get('schema')!r}, this "
                                    f"RaMP reads {SCHEMA!r}", data, "schema"))
        for name in ("gpu", "problem", "family", "family_version", "model", "static_table"):
            if name not in data:
                raise InputError(locate(f"{where}: missing field {name!r}", data))
        problem = MoEProblem.from_dict(data["problem"], where=f"{where}: problem")
        model = WaveCostModel.from_dict(data["model"], problem, where=f"{where}: model")
        table = _static_table(data["static_table"], len(model.bank),
                              locate(where, data, "static_table"))
        for name in ("gpu", "family", "family_version"):
            if not isinstance(data[name], str) or not data[name]:
                raise InputError(locate(f"{where}: field {name!r} must be a non-empty string, "
                                        f"got {data[name]!r}", data, name))
        provenance = data.get("provenance", {})
        if not isinstance(provenance, dict):
            raise InputError(locate(f"{where}: field 'provenance' must be an object, got "
                                    f"{type_name(provenance)}", data, "provenance"))
        error = data.get("model_error")
        error = None if error is None else ModelError.from_dict(error, f"{where}: model_error")
        return cls(data["gpu"], problem, data["family"], data["family_version"], model,
                   table, dict(provenance), error)


def _static_table(data: Any, num_configs: int, where: str) -> dict[int, int]:
    """A profile's ``static_table``: a non-empty map of token counts (as JSON keys) to
    config indices of the bank."""
    if not isinstance(data, dict) or not data:
        raise InputError(f"{where}: field 'static_table' must be a non-empty object mapping "
                         "tokens to a config index")
    table = {}
    for key, value in data.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 9 and int(key) >= 1):
            raise InputError(locate(f"{where}: field 'static_table' key {key!r} is not a "
                                    "token count >= 1", data, key))
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_configs:
            raise InputError(locate(f"{where}: static_table names config {value!r} for {key} "
                                    f"tokens, the bank has {num_configs}", data, key))
        table[int(key)] = value
    return table


def load_profile(
    path: str | Path,
    expect_gpu: str | None = None,
    expect_problem: MoEProblem | None = None,
    expect_family_version: str | None = None,
) -> Profile:
    """Read a profile and check it was measured for what the caller will run."""
    path = Path(path)
    data = read_json(path, "profile")
    profile = Profile.from_dict(data, where=str(path))
    if expect_gpu is not None and profile.gpu != expect_gpu:
        raise ProfileMismatchError(f"{path}: measured on {profile.gpu}, this GPU is "
                                   f"{expect_gpu}; profile it with `ramp profile`")
    if expect_problem is not None and profile.problem != expect_problem:
        raise ProfileMismatchError(f"{path}: profile is for {profile.problem.key}, the call is "
                                   f"{expect_problem.key}")
    if expect_family_version is not None and profile.family_version != expect_family_version:
        raise ProfileMismatchError(f"{path}: family version {profile.family_version}, kernels "
                                   f"installed are version {expect_family_version}")
    return profile


def embedded_profile_paths() -> list[Path]:
    """Profiles shipped with the package (measured on real GPUs, see provenance)."""
    root = resources.files("ramp") / "data" / "profiles"
    if not root.is_dir():
        return []
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".json"))


def find_profile(gpu: str, problem: MoEProblem, family: str | None = "triton"
                 ) -> Profile | None:
    """The embedded profile of ``family`` for this GPU and problem, or None.

    Families shipped: "triton" (the host-dispatched bank), "triton-poly" (the sync-free
    kernel's branches), "cute" (the CuTe DSL sm90 bank), "grouped_mm" (torch._grouped_mm
    as a black box); None: any. Each call returns a freshly loaded profile (callers may
    change its provenance); which file holds what is read once per process.
    """
    for path, key in _embedded_keys():
        if key[0] == gpu and key[1] == problem and family in (None, key[2]):
            return load_profile(path)
    return None


@functools.cache
def _embedded_keys() -> tuple[tuple[Path, tuple[str, MoEProblem, str]], ...]:
    """(path, (gpu, problem, family)) of every embedded profile, read from the files'
    header fields (parsing all 48 takes 40 ms; building them 0.6 s): the simulator asks
    for profiles per layer and policy, and loading every one on every ask was most of a
    replay's set-up time. A file whose header does not read is loaded whole, which
    reports what is wrong with it."""
    keys = []
    for path in embedded_profile_paths():
        data = read_json(path, "profile")
        try:
            key = (data["gpu"], MoEProblem.from_dict(data["problem"]), data["family"])
        except (KeyError, TypeError, InputError):
            p = load_profile(path)
            key = (p.gpu, p.problem, p.family)
        keys.append((path, key))
    return tuple(keys)
