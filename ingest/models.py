"""Readers of model files (docs/method.md#model-files): ONNX, PyTorch state dicts, safetensors, NumPy .npz.

Each returns an ``ExtractedModel``: its convolutions in graph order, each with its weight as
float32 (out, in/groups, kh, kw), its groups and its conv level, and the model-level counts.

- ONNX: every Conv, ConvInteger and QLinearConv whose weight is an initializer or a Constant
  node, possibly through Identity, Cast and DequantizeLinear (quantized weights dequantized:
  (w - zero_point) * scale, per tensor or per output channel; ConvInteger has no scale, so its
  filters are w - zero_point). External data files are loaded from beside the model.
  conv_depth: every node gets its graph depth, the longest path from the graph inputs counted in
  nodes (nodes fed only by constants have none); the sorted distinct depths holding any 4-D
  convolution (Conv, ConvTranspose, ConvInteger, QLinearConv, any kernel size) are the levels.
- PyTorch / safetensors / npz: every 4-D weight is a convolution, in file order; each is a level.
  ``producer`` only when the file states it (a checkpoint's or the safetensors metadata's
  entries, ``stated_producer``), never the version of the library reading it.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import IngestError, file_error

MAX_NAME_CHARS = 200                                       # of a convolution's name, as messages and reports show it
CONV_OPS = {"Conv", "ConvInteger", "QLinearConv"}          # whose filters are extracted
LEVEL_OPS = CONV_OPS | {"ConvTranspose"}                    # convolutions that make levels
WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}


@dataclass
class ExtractedConv:
    name: str
    weight: np.ndarray      # float32 (out, in/groups, kh, kw)
    groups: int
    level: int              # index of its conv level
    op: str = "Conv"


@dataclass
class ExtractedModel:
    kind: str
    convs: list[ExtractedConv]           # every 4-D convolution, any kernel size
    n_levels: int
    producer: str | None = None
    op_set: int | None = None
    op_counts: dict[str, int] = field(default_factory=dict)

    def kernel_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.convs:
            key = f"({c.weight.shape[2]}, {c.weight.shape[3]}) filters"
            counts[key] = counts.get(key, 0) + int(c.weight.shape[0] * c.weight.shape[1])
        return counts


# ---- detection ---------------------------------------------------------------------------------
def detect(path: Path) -> str | None:
    """'onnx', 'torch', 'safetensors', 'npz' by content, or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "torch" if head[:4] == b"PK\x03\x04" and path.suffix in (".pt", ".pth") else None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return None
    if head[:1] == b"\x80":  # a pickle: the legacy torch.save format
        return "torch"
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    # An ONNX ModelProto starts with field 1, ir_version, a varint (tag byte 0x08) of a small
    # version. The full parse (in read_onnx) then confirms it; parsing here too would double
    # the cost of reading a large model.
    return "onnx" if head[:1] == b"\x08" and 1 <= head[1] <= 32 else None


# ---- ONNX ----------------------------------------------------------------------------------------
def read_onnx(path: Path, external_data: bool = True) -> ExtractedModel:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise file_error(path, f"not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
    from onnx import external_data_helper as ext

    # _get_all_tensors: the walk load_external_data_for_model makes (initializers, attributes, subgraphs)
    if not external_data and any(ext.uses_external_data(t) for t in ext._get_all_tensors(model)):
        raise file_error(path, "keeps tensors in external data files, which an upload cannot bring along: save the "
                               "model with its weights inside (onnx.save(model, path, save_as_external_data=False))")
    try:
        ext.load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise file_error(path, f"cannot load its external data ({type(e).__name__}: {str(e)[:200]})") from None
    g = model.graph
    producer_of = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            producer_of[o] = i
    initializers = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input} - set(initializers)

    # Graph depth: the longest path from the graph inputs, in nodes (nodes are topologically sorted).
    depth: dict[int, int] = {}
    for i, n in enumerate(g.node):
        ds = [depth[producer_of[x]] for x in n.input if x in producer_of and producer_of[x] in depth]
        if ds:
            depth[i] = 1 + max(ds)
        elif any(x in graph_inputs for x in n.input):
            depth[i] = 1

    cache: dict[str, np.ndarray] = {}

    def resolve(name: str, conv: str) -> np.ndarray:
        if name in cache:
            return cache[name]
        if name in initializers:
            arr = numpy_helper.to_array(initializers[name])
        elif name in producer_of:
            node = g.node[producer_of[name]]
            if node.op_type == "Constant":
                attr = {a.name: a for a in node.attribute}
                if "value" not in attr:
                    raise file_error(path, f"weight of {conv}: Constant {node.name!r} holds no tensor value")
                arr = numpy_helper.to_array(attr["value"].t)
            elif node.op_type == "Identity":
                arr = resolve(node.input[0], conv)
            elif node.op_type == "Cast":
                to = next(a.i for a in node.attribute if a.name == "to")
                arr = resolve(node.input[0], conv).astype(onnx.helper.tensor_dtype_to_np_dtype(to))
            elif node.op_type == "DequantizeLinear":
                x = resolve(node.input[0], conv)
                scale = resolve(node.input[1], conv)
                zp = resolve(node.input[2], conv) if len(node.input) > 2 and node.input[2] else np.zeros((), x.dtype)
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                arr = _dequantize(x, scale, zp, axis)
            else:
                raise file_error(path, f"weight of {conv} is computed by a {node.op_type} node ({node.name!r}); "
                                  "only initializers, Constant, Identity, Cast and DequantizeLinear are resolved")
        elif name in graph_inputs:
            raise file_error(path, f"weight of {conv} is the graph input {name!r}, not a constant: cannot be resolved")
        else:
            raise file_error(path, f"weight of {conv}: tensor {name!r} is defined nowhere in the graph")
        cache[name] = arr
        return arr

    convs_raw, dequantized = [], {}
    for i, n in enumerate(g.node):
        if n.op_type not in LEVEL_OPS:
            continue
        label = f"{n.op_type} {(n.name or '#' + str(i))[:MAX_NAME_CHARS]!r}"
        w = resolve(n.input[WEIGHT_INPUT[n.op_type]], label)
        if w.ndim != 4:
            continue  # 1-D/3-D convolutions are not 2-D filters
        if np.iscomplexobj(w):
            raise file_error(path, f"weight of {label} is complex ({w.dtype}): filters are real numbers")
        groups = next((a.i for a in n.attribute if a.name == "group"), 1)
        if groups < 1 or w.shape[0] % groups:
            raise file_error(path, f"{label}: group {groups} does not divide its {w.shape[0]} output channels")
        if n.op_type in ("ConvInteger", "QLinearConv"):  # once per distinct weight: many nodes may share one
            key = (n.op_type, *n.input[WEIGHT_INPUT[n.op_type]:])
            if key not in dequantized:
                if n.op_type == "ConvInteger":
                    zp = resolve(n.input[3], label) if len(n.input) > 3 and n.input[3] else np.zeros((), w.dtype)
                    dequantized[key] = _dequantize(w, np.ones((), np.float32), zp, 0)
                else:
                    dequantized[key] = _dequantize(w, resolve(n.input[4], label), resolve(n.input[5], label), 0)
            w = dequantized[key]
        if i not in depth:
            raise file_error(path, f"{label} is not reachable from the graph inputs")
        convs_raw.append((label, w, groups, depth[i], n.op_type))
    levels = sorted({d for *_, d, _ in convs_raw})
    convs = [ExtractedConv(label, np.ascontiguousarray(w, dtype=np.float32), groups, levels.index(d), op)
             for label, w, groups, d, op in convs_raw]
    ops: dict[str, int] = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x) or None
    op_set = model.opset_import[0].version if model.opset_import else None
    return ExtractedModel("onnx", convs, len(levels), producer, op_set, ops)


def _dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """(x - zero_point) * scale, with per-axis scale/zero_point broadcast along ``axis``."""
    x = x.astype(np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    zp = np.asarray(zero_point, dtype=np.float64)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"a dequantization axis {axis} of a {x.ndim}-D weight")
    for what, v in (("scale", scale), ("zero point", zp)):  # per tensor, or per channel of ``axis``: never broadcast wider
        if not (v.size == 1 or (v.ndim == 1 and v.size == x.shape[axis])):
            raise ValueError(f"a dequantization {what} of shape {v.shape} for a weight of shape {x.shape} (axis {axis})")
    scale, zp = (v.reshape(()) if v.size == 1 else v for v in (scale, zp))
    shape = [1] * x.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis] = scale.size
        scale = scale.reshape(shape)
    if zp.ndim == 1 and zp.size > 1:
        shape = [1] * x.ndim
        shape[axis] = zp.size
        zp = zp.reshape(shape)
    return ((x - zp) * scale).astype(np.float32)


# ---- 4-D weights in file order ---------------------------------------------------------------------
# Entries of a checkpoint dict or of safetensors metadata that name the framework that wrote the
# file, with its version: "<framework>_version" -> "<framework> <version>" (a Lightning
# checkpoint records "pytorch-lightning_version"). The reader's own version is never used.
FRAMEWORK_VERSION_KEYS = ("pytorch_version", "torch_version", "pytorch-lightning_version", "lightning_version")


def stated_producer(meta: dict) -> str | None:
    """The producer a file states itself, else None: a "producer" entry as it is; "producer_name"
    (and "producer_version", as ONNX names them); or a framework's recorded version."""
    def text(key: str) -> str | None:
        v = meta.get(key)
        return (v.strip() or None) if isinstance(v, str) else None

    if text("producer"):
        return text("producer")
    if text("producer_name"):
        return " ".join(x for x in (text("producer_name"), text("producer_version")) if x)
    for key in FRAMEWORK_VERSION_KEYS:
        if text(key):
            return f"{key.removesuffix('_version')} {text(key)}"
    return None


def _from_arrays(kind: str, items: list[tuple[str, np.ndarray]], producer: str | None) -> ExtractedModel:
    convs = [(name[:MAX_NAME_CHARS], a) for name, a in items if a.ndim == 4]
    out = [ExtractedConv(name, np.ascontiguousarray(a, dtype=np.float32), 1, k) for k, (name, a) in enumerate(convs)]
    return ExtractedModel(kind, out, len(out), producer, None, {})


# torch from PyPI is a CUDA build of several GB (with its nvidia-* packages); the CPU build, which is
# all reading a file needs, is on PyTorch's own index.
TORCH_CPU = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def read_torch(path: Path) -> ExtractedModel:
    try:
        import torch
    except ImportError:
        raise file_error(path, f"is a PyTorch file, and reading it needs torch, its CPU build: {TORCH_CPU} (or "
                               "pip install 'cnnfilterdb[torch]', which takes PyPI's torch: a CUDA build of several GB)") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()
        reason = ("it holds objects that only running pickled code could build (a whole model saved with "
                  "torch.save(model): save its weights instead, torch.save(model.state_dict(), path))") \
            if "weights_only" in str(e) else (msg[0][:200] if msg else type(e).__name__)
        raise file_error(path, f"cannot be loaded safely with torch.load(weights_only=True): {reason}") from None
    state = _find_state_dict(obj)
    if state is None:
        raise file_error(path, "holds no state dict (a mapping of names to tensors, or a checkpoint containing one)")
    # float32 by torch (numpy has no bfloat16 or float8): the values a float32 conversion gives
    items = [(k, v.detach().cpu().to(torch.float32).numpy()) for k, v in state.items() if isinstance(v, torch.Tensor)
             and v.is_floating_point() and v.layout == torch.strided and not v.is_meta]
    # Not the torch reading it: torch.save records no version, so only a checkpoint's own entries say.
    return _from_arrays("torch", items, stated_producer(obj) if isinstance(obj, dict) else None)


def _find_state_dict(obj):
    import torch

    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("state_dict", "model_state_dict", "model", "net", "module", "weights"):
            if key in obj:
                found = _find_state_dict(obj[key])
                if found is not None:
                    return found
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        return tensors or None
    return None


def _floating(a: np.ndarray) -> bool:
    """A float array: numpy's own, or ml_dtypes' bfloat16 and float8 types (which numpy does not count)."""
    return np.issubdtype(a.dtype, np.floating) or a.dtype.name.startswith(("bfloat16", "float8"))


def read_safetensors(path: Path) -> ExtractedModel:
    import ml_dtypes  # noqa: F401  (registers bfloat16 and float8 with numpy: safetensors' own types)
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise file_error(path, f"not a readable safetensors file ({type(e).__name__}: {str(e)[:200]})") from None
    with open(path, "rb") as f:  # file order, as written (load_file returns a dict in header order)
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    order = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    metadata = header.get("__metadata__")
    return _from_arrays("safetensors", [(k, tensors[k]) for k in order if _floating(tensors[k])],
                        stated_producer(metadata) if isinstance(metadata, dict) else None)


def read_npz(path: Path) -> ExtractedModel:
    try:
        with np.load(path, allow_pickle=False) as z:
            items = [(k, z[k]) for k in z.files]
    except Exception as e:
        raise file_error(path, f"not a readable .npz file ({type(e).__name__}: {str(e)[:200]})") from None
    # An .npz states no producer (numpy is its format, not what made the weights).
    return _from_arrays("npz", [(k, a) for k, a in items if _floating(a)], None)


READERS = {"onnx": read_onnx, "torch": read_torch, "safetensors": read_safetensors, "npz": read_npz}


# A zip (a .pt, an .npz) may unpack to at most this many times its own size, or UNPACKED_FLOOR bytes
# if more: torch.save stores its tensors uncompressed, np.savez_compressed shrinks weights a few
# times; a zip bomb (gigabytes of zeros in a few megabytes) is refused before anything is unpacked.
UNPACKED_RATIO = 32
UNPACKED_FLOOR = 1 << 30


def check_unpacked(path: Path, max_unpacked: int | None = None) -> None:
    """IngestError naming the file if it is a zip whose members would unpack to more than
    ``max_unpacked`` bytes (default: UNPACKED_RATIO times its size, at least UNPACKED_FLOOR). The
    sizes are the zip's own records, which the readers hold the members to (zipfile and torch's
    reader stop at a member's recorded size)."""
    if not zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    limit = max(UNPACKED_FLOOR, UNPACKED_RATIO * size) if max_unpacked is None else max_unpacked
    try:
        with zipfile.ZipFile(path) as z:
            unpacked = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise file_error(path, f"is a damaged zip ({str(e)[:200]})") from None
    if unpacked > limit:
        raise file_error(path, f"would unpack to {unpacked:,} bytes from {size:,} (more than the {limit:,} allowed: "
                               "a zip bomb, or a model too large to read here)")


def read_model(path: Path, kind: str, max_unpacked: int | None = None, external_data: bool = True) -> ExtractedModel:
    """Read and check a model file: every 4-D convolution with its weight (out, in/groups, kh, kw)
    float32, groups and conv level. IngestError naming the file if it cannot be read, holds a NaN
    or Inf weight, or holds no 3x3 convolution, or is a zip that would unpack to more than
    ``max_unpacked`` bytes (``check_unpacked``), or (``external_data`` False: an upload) an ONNX
    model keeping tensors in other files.

    Parameters
    ----------
    path : the file; kind : 'onnx', 'torch', 'safetensors' or 'npz' (``detect``).
    """
    if kind in ("torch", "npz"):
        check_unpacked(path, max_unpacked)
    try:
        m = READERS[kind](path, external_data=external_data) if kind == "onnx" else READERS[kind](path)
    except IngestError:
        raise
    except MemoryError:
        raise file_error(path, "is too large to read here (out of memory)") from None
    except Exception as e:  # a malformed file a reader did not foresee: one line naming it, never a traceback
        raise file_error(path, f"cannot be read as {kind} ({type(e).__name__}: {str(e)[:200]})") from None
    bad = [c.name for c in m.convs if not np.isfinite(c.weight).all()]
    if bad:
        c = next(c for c in m.convs if c.name == bad[0])
        i = int(np.argmax(~np.isfinite(c.weight.reshape(-1))))
        raise file_error(path, f"weight of {bad[0]} has a NaN or Inf value (element {i} of shape {c.weight.shape})")
    if not any(c.weight.shape[2:] == (3, 3) and c.op in CONV_OPS for c in m.convs):
        raise file_error(path, f"holds no 3x3 convolution ({len(m.convs)} 4-D convolution(s), kernels "
                          f"{sorted({c.weight.shape[2:] for c in m.convs}) or 'none'})")
    return m


