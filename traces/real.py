"""Real routing recordings to ``ramp-trace/1``: ESFT's expert-score files and their repack.

- ESFT (github.com/deepseek-ai/ESFT, ``results/expert_scores/<task>/expert_weights_L.txt``,
  one file per MoE layer L = 1..n): one line per sequence, its tokens' top-k expert ids
  tab-separated (token after token), a double tab, then as many gate weights.
- The ``.npz`` repack beside the data (``../shared/data/routing``): ``topk_ids`` int
  ``[tokens, layers, top_k]`` and ``seq_lens`` ``[sequences]``.

Both become a ``ramp.tokenrouting.TokenRouting``; ``routing_steps`` re-batches it into
trace steps of T tokens, consecutive (phase ``prefill``) or drawn across sequences
(``decode``), each with its token-level ids.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.models import MoEModel
from ramp.plaindata import decode_utf8
from ramp.tokenrouting import TokenRouting
from ramp.trace import TraceHeader, TraceStep

ESFT_FILE = re.compile(r"expert_weights_(\d+)\.txt$")
PHASE_OF = {"consecutive": "prefill", "shuffled": "decode"}


def read_esft_layer(path: Path, top_k: int, num_experts: int) -> list[np.ndarray]:
    """One ESFT layer file: per sequence, its ``[tokens, top_k]`` expert ids."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    text = decode_utf8(data, str(path), "ESFT expert scores")
    seqs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        ids_text, sep, weights_text = line.partition("\t\t")
        where = f"{path}:{lineno}"
        if not sep:
            raise InputError(f"{where}: no double tab between the expert ids and the gate "
                             "weights")
        try:
            ids = np.array([int(v) for v in ids_text.split("\t")], dtype=np.int64)
        except ValueError:
            raise InputError(f"{where}: field 'ids': not all tab-separated integers") from None
        weights = weights_text.split("\t")
        if ids.size % top_k or ids.size == 0:
            raise InputError(f"{where}: field 'ids': {ids.size} ids is not a positive "
                             f"multiple of top_k={top_k}")
        bad = ids[(ids < 0) | (ids >= num_experts)]
        if bad.size:
            raise InputError(f"{where}: field 'ids': expert id {int(bad[0])} is not in "
                             f"0..{num_experts - 1}")
        if len(weights) != ids.size:
            raise InputError(f"{where}: field 'weights': {len(weights)} gate weights for "
                             f"{ids.size} expert ids")
        seqs.append(ids.reshape(-1, top_k))
    if not seqs:
        raise InputError(f"{path}: no sequences")
    return seqs


def read_esft(source: str | Path, num_experts: int, top_k: int) -> TokenRouting:
    """All ``expert_weights_L.txt`` of a directory (or one file), layers in order of L."""
    source = Path(source)
    if source.is_dir():
        found = sorted((int(m.group(1)), p) for p in source.iterdir()
                       if (m := ESFT_FILE.search(p.name)))
        if not found:
            raise InputError(f"{source}: no expert_weights_L.txt files")
        layers = [L for L, _ in found]
        if layers != list(range(layers[0], layers[0] + len(layers))):
            raise InputError(f"{source}: layer files are not consecutive ({layers})")
        paths = [p for _, p in found]
    else:
        paths = [source]
    per_layer = [read_esft_layer(p, top_k, num_experts) for p in paths]
    lens = np.array([len(s) for s in per_layer[0]], dtype=np.int64)
    for path, seqs in zip(paths[1:], per_layer[1:]):
        other = np.array([len(s) for s in seqs], dtype=np.int64)
        if not np.array_equal(other, lens):
            raise InputError(f"{path}: sequences differ from {paths[0].name} (lines or "
                             "tokens per line)")
    ids = np.stack([np.concatenate(seqs) for seqs in per_layer])
    return _checked(TokenRouting, str(paths[0]), topk_ids=ids, seq_lens=lens,
                    num_experts=num_experts)


def read_routing_npz(path: str | Path, num_experts: int) -> TokenRouting:
    """The repack: ``topk_ids`` ``[tokens, layers, top_k]`` and ``seq_lens``."""
    path = Path(path)
    try:
        with np.load(path) as data:
            missing = [k for k in ("topk_ids", "seq_lens") if k not in data.files]
            if missing:
                raise InputError(f"{path}: missing array(s) {missing}")
            ids, lens = data["topk_ids"], data["seq_lens"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz ({type(exc).__name__}: "
                         f"{exc or 'empty file'})") from None
    if ids.ndim != 3:
        raise InputError(f"{path}: field 'topk_ids' must be [tokens, layers, top_k], got "
                         f"shape {list(ids.shape)}")
    # checked before the cast to int16, which would wrap an id >= 32768 into range
    if ids.dtype.kind not in "iu" or (ids.size and (ids.min() < 0
                                                   or ids.max() >= num_experts)):
        raise InputError(f"{path}: field 'topk_ids' must be whole expert ids in "
                         f"0..{num_experts - 1} (dtype {ids.dtype})")
    if lens.dtype.kind not in "iu":
        raise InputError(f"{path}: field 'seq_lens' must be whole token counts "
                         f"(dtype {lens.dtype})")
    return _checked(TokenRouting, str(path), topk_ids=ids.transpose(1, 0, 2).astype(np.int16),
                    seq_lens=np.asarray(lens, dtype=np.int64), num_experts=num_experts)


def _checked(cls: type, where: str, **fields: Any) -> Any:
    try:
        return cls(**fields)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def read_recording(source: str | Path, model: MoEModel) -> TokenRouting:
    """A recording in either format (``.npz`` file, else ESFT), checked against the
    catalog model: same top-k, layer count and experts."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such file or directory")
    if source.suffix == ".npz":
        routing = read_routing_npz(source, model.num_experts)
    else:
        routing = read_esft(source, model.num_experts, model.top_k)
    if routing.top_k != model.top_k or routing.layers != model.moe_layers:
        raise InputError(f"{source}: {routing.layers} layers of top-{routing.top_k} routing, "
                         f"model {model.name} has {model.moe_layers} MoE layers, "
                         f"top-{model.top_k}; pick the model with --model")
    return routing


def routing_steps(routing: TokenRouting, tokens: int, batching: str = "consecutive",
                  seed: int = 0, with_ids: bool = True) -> Iterator[TraceStep]:
    """Trace steps of ``tokens`` tokens each (see ``TokenRouting.batches``)."""
    hists, ids = routing.batches(tokens, batching, seed, with_ids=with_ids)
    phase = PHASE_OF[batching]
    for i, h in enumerate(hists):
        yield TraceStep(step=i, phase=phase, tokens=tokens, hists=h.astype(np.int64),
                        topk_ids=None if ids is None else ids[i])


def recording_header(model: MoEModel, origin: str, source: Path, tokens: int,
                     batching: str, seed: int, routing: TokenRouting) -> TraceHeader:
    """Header of a converted recording: where it came from and how it was batched."""
    from ramp import __version__

    return TraceHeader.from_model(
        model, source=f"converted:{origin}:{source.name}", engine="ramp.traces.real",
        engine_version=__version__,
        meta={"recording": str(source), "tokens_per_step": tokens, "batching": batching,
              "seed": seed, "recorded_tokens": routing.tokens,
              "sequences": int(routing.seq_lens.size)})
