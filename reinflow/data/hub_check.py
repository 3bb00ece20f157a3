"""Whether a hub dataset name can be loaded, asked before anything is prepared (one quick request).

``reinflow prepare-data --target NAME`` hands NAME to ``datasets.load_dataset``, which takes a
local folder or a Hugging Face dataset id. A name that is neither, or a dataset the hub does not
have, would otherwise surface only after Prefect started and ``datasets`` retried for a while.
"""

from __future__ import annotations

import os
from pathlib import Path

from reinflow.config.models import is_hub_id
from reinflow.data.sources import DataSourceError
from reinflow.errors import one_line

HUB_CHECK_TIMEOUT_SECONDS = 10.0
"""How long the one request to the hub may take before the hub counts as unreachable."""


def check_hub_dataset(name: str, project_root: Path) -> None:
    """Raise DataSourceError (one line) where ``name`` is neither a local folder, nor a dataset in
    the local Hugging Face cache, nor a dataset the hub knows."""
    if (project_root / name).exists() or cached_locally(name):
        return
    if not is_hub_id(name):
        raise DataSourceError(f"'{name}': no such file or folder, and not a Hugging Face dataset id (namespace/name)")
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise DataSourceError(f"hub dataset '{name}' is not in the local cache and the hub is switched off (HF_HUB_OFFLINE)")
    try:
        HfApi().dataset_info(name, timeout=HUB_CHECK_TIMEOUT_SECONDS)
    except RepositoryNotFoundError:
        raise DataSourceError(f"hub dataset '{name}': no such dataset on the Hugging Face hub "
                              "(or it is private: log in with `hf auth login`)") from None
    except HfHubHTTPError:
        return  # the hub answered, but not about this dataset: let `datasets` try and say why
    except Exception as error:  # noqa: BLE001  (any transport error: DNS, refused, timeout)
        raise DataSourceError(f"hub dataset '{name}' is not in the local cache and the Hugging Face hub cannot "
                              f"be reached ({type(error).__name__}: {one_line(error)[:160]})") from None


def cached_locally(name: str) -> bool:
    """Whether ``datasets`` or ``huggingface_hub`` already hold ``name`` in their caches."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE") or home / "hub").expanduser()
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets").expanduser()
    return ((hub / ("datasets--" + name.replace("/", "--"))).is_dir()
            or (datasets_cache / name.replace("/", "___")).is_dir())
