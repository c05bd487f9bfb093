"""The model's weights in a Flower message as one flat array instead of one array per tensor.

Flower moves a message as a tree of objects, each pushed or pulled with a request of its own at every hop (ServerApp
-> SuperLink -> SuperNode -> ClientApp, and back). An ``ArrayRecord`` of a state dict is two objects per tensor (the
array and its one chunk): the digits CNN's 20 tensors made a training message of 28 objects, packed it is 6, for the
same bytes. Packed, the weights are one float32 vector (integer buffers such as BatchNorm's ``num_batches_tracked``
come back rounded), and FedAvg's weighted mean of the vectors is its per-tensor mean. The layout (names, shapes,
dtypes) travels in the round's config; a reply goes back in the layout it came in, so the server reads it with its own.
A client also takes an ordinary ``ArrayRecord`` (another ServerApp) and answers it in kind.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord

PACKED = "timebudget-packed"  # the one array's key
NAMES, SHAPES, DTYPES = "layout-names", "layout-shapes", "layout-dtypes"  # the round config's layout keys


def layout(weights: Mapping[str, torch.Tensor]) -> dict[str, list[Any]]:
    """The config entries that let a receiver unpack ``weights``: names, shapes (each as its rank, then its sizes, in
    one list of ints: Flower's config values are flat) and dtypes."""
    shapes: list[int] = []
    for tensor in weights.values():
        shapes += [tensor.dim(), *tensor.shape]
    dtypes = [str(t.dtype).removeprefix("torch.") for t in weights.values()]
    return {NAMES: list(weights), SHAPES: shapes, DTYPES: dtypes}


def pack(weights: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """``weights`` as an ``ArrayRecord`` of one float32 vector (read it back with :func:`unpack` and its layout)."""
    flat = torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in weights.values()])
    return ArrayRecord({PACKED: flat})


def is_packed(arrays: ArrayRecord) -> bool:
    return list(arrays.keys()) == [PACKED]


def unpack(arrays: ArrayRecord, entries: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of ``arrays``: a packed vector read with the layout in ``entries`` (the round's config, or
    :func:`layout` of a model of the same architecture), or an ordinary ``ArrayRecord`` as it is."""
    if not is_packed(arrays):
        return arrays.to_torch_state_dict()
    flat = arrays.to_torch_state_dict()[PACKED]
    shapes, weights, offset, at = list(entries[SHAPES]), {}, 0, 0
    for name, dtype in zip(entries[NAMES], entries[DTYPES]):
        rank = shapes[at]
        shape = shapes[at + 1:at + 1 + rank]
        at += 1 + rank
        size = 1
        for dim in shape:
            size *= dim
        part = flat[offset:offset + size].reshape(shape)
        offset += size
        target = getattr(torch, dtype)
        weights[name] = (part.round() if not target.is_floating_point else part).to(target)
    if offset != flat.numel():
        raise ValueError(f"packed weights hold {flat.numel()} values, their layout {offset}")
    return weights


def like(weights: Mapping[str, torch.Tensor], arrays: ArrayRecord) -> ArrayRecord:
    """``weights`` in the form ``arrays`` came in: packed, or one array per tensor."""
    return pack(weights) if is_packed(arrays) else ArrayRecord(dict(weights))
