"""Registries of file readers: which function reads a given data or model file.

A reader registers the suffixes it claims and, where its format has them, the leading bytes
(`magic`) or a content test (`sniff`) that recognise it. A lookup first asks the readers that
recognise their format under any name (an ONNX model is refused whatever its suffix), then takes
the readers claiming the file's suffix and picks among them by content: the first whose magic or
sniff matches, else the first that claims the suffix without testing content, else the first
claimant, which refuses the file in its own words. A file whose content belongs to a reader of
another suffix is never read as that format: its name says what the user meant, so a renamed file
is refused as its suffix's format would refuse it. A suffix nobody claims is refused with the
registry's message, which lists the formats the registered readers describe. A path that is a
folder goes to the folder readers alone (an image folder is data), in registration order.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import GoodnetError, shown_path

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
_MAGIC_BYTES = 16  # the longest magic a reader may give


@dataclass(frozen=True)
class Reader:
    """One registered reader: `read(path, ...)` for the files it claims."""

    name: str
    read: Callable
    suffixes: tuple[str, ...] = ()  # lower case, with the dot
    magic: tuple[bytes, ...] = ()  # leading bytes, any one of which marks the format
    sniff: Callable[[str], bool] | None = None  # a content test where no fixed bytes tell
    any_suffix: bool = False  # recognised by content under any name (magic or sniff required)
    describe: str | None = None  # how the unknown-format message names it; None: not named
    directory: bool = False  # reads a folder (tried, in order, for a path that is a folder)

    def claims(self, lower: str) -> int:
        """The length of the longest suffix of this reader that ends `lower` (0: none)."""
        return max((len(s) for s in self.suffixes if lower.endswith(s)), default=0)

    def recognises(self, path: str, head: bytes) -> bool:
        """Whether the file's content is this reader's format (False where the reader has no test)."""
        if not self.magic and self.sniff is None:
            return False
        if self.magic and not head.startswith(self.magic):
            return False
        try:
            return self.sniff is None or bool(self.sniff(path))
        except (OSError, ValueError):  # a file the test cannot read is not its format
            return False


def listed(items: list[str]) -> str:
    """'a', 'a or b', 'a, b, or c'."""
    if len(items) <= 2:
        return " or ".join(items)
    return ", ".join(items[:-1]) + ", or " + items[-1]


def leading_bytes(path: str, count: int = _MAGIC_BYTES) -> bytes:
    """The first `count` bytes of a file (fewer for a short file; none where it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(count)
    except OSError:
        return b""


def holds_safetensors(path: str) -> bool:
    """Whether a file opens as safetensors does: an 8-byte little-endian header length that fits
    in the file, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            f.seek(0, 2)
            size = f.tell()
    except OSError:
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= size - 8 and head[8:9] == b"{"


class ReaderRegistry:
    """Readers of one kind of file (data or models), in registration order."""

    def __init__(self, kind: str, error: type[GoodnetError]):
        self.kind = kind  # "data", "model": names the unknown-format message
        self.error = error
        self._readers: dict[str, Reader] = {}

    def register(
        self,
        name: str,
        suffixes: tuple[str, ...] = (),
        magic: tuple[bytes, ...] = (),
        sniff: Callable[[str], bool] | None = None,
        any_suffix: bool = False,
        describe: str | None = None,
        directory: bool = False,
    ) -> Callable[[Callable], Callable]:
        """Decorator: register the function as the reader `name` (see the module's docstring). A name
        is taken once; the same function imported again (a module reloaded) replaces itself."""
        if not isinstance(name, str) or not name:
            raise TypeError("a reader needs a non-empty name")
        if isinstance(suffixes, str) or isinstance(magic, bytes):
            raise TypeError(f"reader '{name}': suffixes and magic are tuples, not one value")
        bad = [s for s in suffixes if not (isinstance(s, str) and s.startswith(".") and len(s) > 1)]
        if bad:
            raise TypeError(f"reader '{name}': a suffix starts with a dot, not {bad[0]!r}")
        if any(not isinstance(m, bytes) or not 0 < len(m) <= _MAGIC_BYTES for m in magic):
            raise TypeError(f"reader '{name}': magic is 1 to {_MAGIC_BYTES} leading bytes")
        if any_suffix and not (magic or sniff):
            raise TypeError(f"reader '{name}': a reader for any suffix needs magic or a sniff")
        if not (suffixes or any_suffix or directory):
            raise TypeError(f"reader '{name}': give the suffixes it reads, or any_suffix with a content test")
        if directory and (suffixes or magic or any_suffix):
            raise TypeError(f"reader '{name}': a folder reader has no suffixes or magic (a sniff may test the folder)")

        def add(read: Callable) -> Callable:
            old = self._readers.get(name)
            if old is not None and _origin(old.read) != _origin(read):
                raise ValueError(f"{self.kind} reader name '{name}' is taken")
            self._readers[name] = Reader(
                name, read, tuple(s.lower() for s in suffixes), tuple(magic), sniff, any_suffix, describe, directory
            )
            return read

        return add

    def unregister(self, name: str) -> Reader:
        """Remove the reader `name` (a test's or a plugin's); KeyError when none is registered."""
        return self._readers.pop(name)

    @contextmanager
    def registered(self, name: str, read: Callable, **options) -> Iterator[Reader]:
        """The reader `name` registered for the duration of a `with` block (tests)."""
        self.register(name, **options)(read)
        try:
            yield self._readers[name]
        finally:
            self._readers.pop(name, None)

    def readers(self) -> tuple[Reader, ...]:
        return tuple(self._readers.values())

    def formats(self) -> str:
        """The formats the readers describe, listed for a message ('A, B, or C')."""
        names: list[str] = []
        for reader in self._readers.values():
            if reader.describe and reader.describe not in names:
                names.append(reader.describe)
        return listed(names)

    def unknown(self, path: str) -> GoodnetError:
        return self.error(f"{shown_path(path)}: unknown {self.kind} format (expected {self.formats()})")

    def _claimants(self, lower: str) -> list[Reader]:
        """The readers claiming a suffix of `lower`: longest suffix first, then in registration order."""
        claims = [(reader.claims(lower), order, reader) for order, reader in enumerate(self._readers.values())]
        return [reader for _, _, reader in sorted((c for c in claims if c[0]), key=lambda c: (-c[0], c[1]))]

    def choose(self, path: str) -> Reader:
        """The reader for `path` (see the module's docstring); the registry's error when none claims it."""
        path = os.fspath(path)
        if os.path.isdir(path):
            for reader in self._readers.values():
                if reader.directory and (reader.sniff is None or reader.recognises(path, b"")):
                    return reader
            raise self.error(f"{shown_path(path)}: a folder, not a {self.kind} file (expected {self.formats()})")
        head = leading_bytes(path)
        for reader in self._readers.values():
            if reader.any_suffix and reader.recognises(path, head):
                return reader
        claimants = self._claimants(path.lower())
        if not claimants:
            raise self.unknown(path)
        for reader in claimants:
            if reader.recognises(path, head):
                return reader
        untested = [reader for reader in claimants if not reader.magic and reader.sniff is None]
        return (untested or claimants)[0]

    def suffix_readers(self, suffix: str) -> list[str]:
        """The names of the readers that claim `suffix` (e.g. '.h5'), in the order a lookup tries them."""
        return [reader.name for reader in self._claimants(suffix.lower())]


def _origin(function: Callable) -> tuple[str, str]:
    return getattr(function, "__module__", ""), getattr(function, "__qualname__", repr(function))
