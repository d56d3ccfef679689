"""ImageNet weights for torchvision's ResNets, read from the local torch hub cache, never downloaded
silently.

Section 5.3.3 fine-tunes an ImageNet-pretrained ResNet-34. On an offline machine a download attempt
can hang for minutes, so a missing file fails at once with :class:`PretrainedWeightsUnavailable`,
which says which file to fetch and where to put it, unless a download is explicitly allowed.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from pipeline.errors import UserError

if TYPE_CHECKING:  # torchvision costs seconds to import; only annotations need it here
    from torchvision.models import WeightsEnum


class PretrainedWeightsUnavailable(UserError):
    """Pretrained weights are not in the local cache and could not (or may not) be downloaded."""


def pretrained_cache_path(weights: WeightsEnum) -> Path:
    """Where torch hub keeps (and looks for) the file of ``weights``.

    That is ``torch.hub.get_dir()/checkpoints/<file name in weights.url>``; ``torch.hub.get_dir()``
    is ``$TORCH_HOME/hub`` when TORCH_HOME is set.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def unavailable_message(weights: WeightsEnum, path: Path, reason: str) -> str:
    return (
        f"pretrained weights {weights} are unavailable: {reason}. "
        f"Fetch {weights.url} and save it as {path.name} in {path.parent} "
        f"(that directory is $TORCH_HOME/hub/checkpoints; set TORCH_HOME to use another cache), "
        f"or pass allow_download=True on a machine with network access."
    )


def load_pretrained_state_dict(
    weights: WeightsEnum, *, allow_download: bool = False, timeout_s: float = 10.0
) -> dict[str, torch.Tensor]:
    """The state dict of ``weights``, read from the torch hub cache with ``weights_only=True``.

    Without ``allow_download`` a missing file fails at once with ``PretrainedWeightsUnavailable``,
    because a download attempt on an offline machine can hang for minutes. With it, torch hub
    downloads the file (checking its hash) under a socket timeout of ``timeout_s`` seconds, and
    any failure is reported the same way.
    """
    path = pretrained_cache_path(weights)
    if not path.is_file():
        if not allow_download:
            raise PretrainedWeightsUnavailable(
                unavailable_message(weights, path, f"{path} does not exist")
            )
        # socket's default timeout is process-wide; it is restored however the download ends.
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)
        try:
            return torch.hub.load_state_dict_from_url(
                weights.url, progress=False, check_hash=True, map_location="cpu", weights_only=True
            )
        except Exception as exc:  # URLError, timeouts, hash mismatch: all mean "no weights"
            raise PretrainedWeightsUnavailable(
                unavailable_message(weights, path, f"download failed ({exc!r})")
            ) from exc
        finally:
            socket.setdefaulttimeout(previous_timeout)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsUnavailable(
            unavailable_message(weights, path, f"{path} could not be read ({exc!r}); delete it")
        ) from exc
