"""The MLC extractor head: a trainable linear map from a hidden state to a consistency vector.

docs/methods.md section 2: ``z_l = W h_l + b`` (hidden -> 512 by default), where ``h_l`` is the
hidden state of layer ``k`` at the last non-padding token of language variant ``l``. The
row normalisation ``z / (||z|| + 1e-12)`` is part of :func:`polyalign.losses.mlc_loss`, not
of the head. The head is trained together with the model and saved *beside* it, in its own
folder, never inside the model's weights: inference never needs it, and the saved model
folder stays a plain ``from_pretrained`` checkpoint.

Layout written by :meth:`MLCExtractor.save` (``dir`` is usually the model folder)::

    dir/mlc_extractor/model.safetensors   # "weight" [dim, hidden], "bias" [dim]
    dir/mlc_extractor/config.json         # {"format": "polyalign.mlc_extractor", "version": 1,
                                          #  "hidden_size": H, "dim": D, "layer": k, "bias": true}

``layer`` follows the Hugging Face ``output_hidden_states`` convention: ``hidden_states[0]``
is the embedding output, ``hidden_states[i]`` the output of decoder layer ``i``, and
``-1`` (the default, as in the released code) the last entry, i.e. the final hidden state
after the final norm (``last_hidden_state``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from polyalign.errors import UserError
from polyalign.io import atomic_write_json

EXTRACTOR_DIRNAME = "mlc_extractor"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_NAME = "polyalign.mlc_extractor"
FORMAT_VERSION = 1


class MLCExtractor(nn.Module):
    """Linear head ``z = W h + b``: ``[..., hidden_size] -> [..., dim]``, computed in float32.

    Args:
        hidden_size: the model's hidden size ``H``.
        dim: output dimension ``D`` (512 in the paper and the released code).
        layer: which hidden state the head reads (HF ``hidden_states`` index; -1 = last).
        bias: whether the map has a bias ``b`` (True in the released code).

    The parameters are float32 whatever the model's dtype: the forward casts ``h`` up and
    runs outside autocast, so bf16 training does not round the consistency vectors (the
    SVD after it runs in float32 anyway). Initialisation is PyTorch's ``nn.Linear`` default.
    """

    def __init__(self, hidden_size: int, dim: int = 512, layer: int = -1, *, bias: bool = True) -> None:
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("dim", dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"MLC extractor {name} must be a positive integer, got {value!r}", field=name)
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise UserError(f"MLC extractor layer must be an integer, got {layer!r}", field="layer")
        self.hidden_size = hidden_size
        self.dim = dim
        self.layer = layer
        self.linear = nn.Linear(hidden_size, dim, bias=bias, dtype=torch.float32)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H] -> [..., D]`` float32 (not normalised)."""
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"expected hidden states with last dim {self.hidden_size}, got {tuple(hidden.shape)}")
        # Outside autocast: under bf16 autocast the linear map would silently run in bf16. Called
        # as a module (not F.linear on its weight): DeepSpeed ZeRO-3 gathers a module's
        # partitioned parameters only when that module itself is called.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.linear(hidden.to(self.linear.weight.dtype))

    def config_dict(self) -> dict[str, Any]:
        """The small JSON config written beside the weights."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "hidden_size": self.hidden_size,
            "dim": self.dim,
            "layer": self.layer,
            "bias": self.linear.bias is not None,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/mlc_extractor/{model.safetensors,config.json}``; returns that folder.

        ``directory`` is the model's output folder: the head lives beside the model.
        """
        out = Path(directory) / EXTRACTOR_DIRNAME
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the MLC extractor folder: {exc.strerror or exc}", file=out) from None
        tensors = {"weight": self.linear.weight.detach().to("cpu").contiguous()}
        if self.linear.bias is not None:
            tensors["bias"] = self.linear.bias.detach().to("cpu").contiguous()
        # Write to a temporary name, then rename: a crash never leaves half a weights file.
        tmp = out / f".{WEIGHTS_NAME}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(out / WEIGHTS_NAME)
        atomic_write_json(out / CONFIG_NAME, self.config_dict())
        return out

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device | None = None) -> MLCExtractor:
        """Load a head saved by :meth:`save` (safetensors only).

        ``directory`` is the folder passed to :meth:`save` (it contains ``mlc_extractor/``) or
        the ``mlc_extractor`` folder itself. A missing folder, a missing or invalid config,
        missing/corrupt weights, or weights whose shapes disagree with the config raise
        :class:`~polyalign.errors.UserError`.
        """
        base = Path(directory)
        inside = (base / CONFIG_NAME).is_file() and base.name == EXTRACTOR_DIRNAME
        folder = base if inside else base / EXTRACTOR_DIRNAME
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not folder.is_dir():
            raise UserError("no MLC extractor here (expected a mlc_extractor/ folder saved with the model)",
                            file=folder)
        config = _read_config(config_path)
        if not weights_path.is_file():
            raise UserError("missing MLC extractor weights", file=weights_path)
        try:
            tensors = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"corrupt MLC extractor weights: {str(exc).splitlines()[0]}", file=weights_path) from None
        extractor = cls(config["hidden_size"], config["dim"], config["layer"], bias=config["bias"])
        expected = {name: tuple(p.shape) for name, p in extractor.linear.named_parameters()}
        found = {name: tuple(t.shape) for name, t in tensors.items()}
        if found != expected:
            raise UserError(f"MLC extractor weights {found} do not match its config {expected}", file=weights_path)
        with torch.no_grad():
            for name, param in extractor.linear.named_parameters():
                param.copy_(tensors[name].to(param.dtype))
        return extractor.to(device) if device is not None else extractor


def _read_config(path: Path) -> dict[str, Any]:
    """Parse and check the extractor's ``config.json``."""
    if not path.is_file():
        raise UserError("missing MLC extractor config", file=path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"invalid MLC extractor config: {exc}", file=path) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise UserError(f"not an MLC extractor config (expected format {FORMAT_NAME!r})", file=path, field="format")
    if config.get("version") != FORMAT_VERSION:
        raise UserError(f"unsupported MLC extractor config version {config.get('version')!r}", file=path,
                        field="version")
    for key in ("hidden_size", "dim", "layer"):
        if not isinstance(config.get(key), int) or isinstance(config.get(key), bool):
            raise UserError(f"expected an integer, got {config.get(key)!r}", file=path, field=key)
    if not isinstance(config.get("bias", True), bool):
        raise UserError(f"expected true or false, got {config.get('bias')!r}", file=path, field="bias")
    config.setdefault("bias", True)
    return config
