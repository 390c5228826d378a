"""The input's bytes, read once: a file, a named pipe or stdin, decompressed by extension.

Everything downstream (checking the columns, counting the rows, sending them) reads
the one stream this module opens, so a pipe or a FIFO works like a file. The bytes
are hashed as they pass, so run.json can record what was read without a second read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

from runner.errors import InputFileError

__all__ = ["STDIN", "InputSource", "stream_suffix"]

STDIN = Path("-")
_CHUNK = 1 << 20


_Decompressed = tuple[IO[bytes], tuple[type[Exception], ...]]


def _gunzip(raw: IO[bytes]) -> _Decompressed:
    stream = gzip.GzipFile(fileobj=raw, mode="rb")
    return stream, (gzip.BadGzipFile, EOFError, zlib.error)  # type: ignore[return-value]


def _unzstd(raw: IO[bytes]) -> _Decompressed:
    # zstandard (python-zstandard): Python 3.11 has no zstd in the standard library
    # (compression.zstd arrived in 3.14). Imported here: only zstd inputs need it.
    import zstandard

    stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return stream, (zstandard.ZstdError,)  # type: ignore[return-value]


# Compressions by the file's last extension; `data.jsonl.gz` is gzip-compressed JSONL.
# Each gives the decompressed stream and the errors it raises on damaged data.
_DECOMPRESSORS: dict[str, Callable[[IO[bytes]], _Decompressed]] = {
    ".gz": _gunzip,
    ".gzip": _gunzip,
    ".zst": _unzstd,
    ".zstd": _unzstd,
}


def stream_suffix(path: Path) -> str:
    """The extension that names the format, past a compression suffix (`a.jsonl.gz` -> .jsonl)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _DECOMPRESSORS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


class _HashingReader(io.RawIOBase):
    """Pass bytes through, hashing and counting them: the fingerprint of one read."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # straight into the buffer, no copy (every raw stream runner opens has readinto)
        n = cast(Any, self._raw).readinto(buffer) or 0
        self.digest.update(memoryview(buffer)[:n])
        self.size += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class InputSource:
    """One input, read once: `open()` gives its decompressed bytes, `fingerprint()` what passed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.is_stdin = self.path == STDIN
        self.name = "<stdin>" if self.is_stdin else str(self.path)
        self._hashing: _HashingReader | None = None
        self._opened = False

    @property
    def compression(self) -> str | None:
        """The compression the extension names, or None."""
        suffix = self.path.suffix.lower()
        return suffix.lstrip(".") if suffix in _DECOMPRESSORS else None

    def is_regular_file(self) -> bool:
        """True for a file that can be read again (not stdin, a pipe or a FIFO)."""
        if self.is_stdin:
            return False
        try:
            return stat.S_ISREG(os.stat(self.path).st_mode)
        except OSError:
            return False

    def identity(self) -> dict[str, int] | None:
        """Size and modification time of a regular file (None for a stream): a cheap 'same file'."""
        if not self.is_regular_file():
            return None
        st = os.stat(self.path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def open(self) -> IO[bytes]:
        """The input's bytes, decompressed; a stream can be opened only once."""
        if self._opened and not self.is_regular_file():
            raise InputFileError(f"{self.name}: a stream can be read only once")
        self._opened = True
        raw: IO[bytes]
        if self.is_stdin:
            raw = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
        else:
            if self.path.is_dir():
                raise InputFileError(f"{self.path}: is a directory, not an input file")
            raw = _open_file(self.path)
        self._hashing = _HashingReader(raw)
        buffered = io.BufferedReader(self._hashing, _CHUNK)
        decompress = _DECOMPRESSORS.get(self.path.suffix.lower())
        if decompress is None:
            return buffered
        stream, errors = decompress(buffered)
        return io.BufferedReader(_Checked(stream, errors, self.name), _CHUNK)

    def spooled(self) -> Path | IO[bytes]:
        """A seekable form for formats that need one (Parquet): the file, or a temporary copy."""
        if self.is_regular_file() and self.compression is None:
            self.fingerprint_file()
            return self.path
        copy = tempfile.TemporaryFile()  # noqa: SIM115 (the Parquet reader closes it)
        with self.open() as stream:
            while chunk := stream.read(_CHUNK):
                copy.write(chunk)
        copy.seek(0)
        return copy

    def fingerprint_file(self) -> None:
        """Hash a regular file that a reader will open by path (Parquet reads it by itself)."""
        with _open_file(self.path) as raw:
            self._hashing = _HashingReader(raw)
            while self._hashing.read(_CHUNK):
                pass

    def fingerprint(self) -> dict[str, Any]:
        """The bytes read so far, for run.json: path, size and sha256 (complete once read)."""
        path = self.name if self.is_stdin else str(self.path.resolve())
        if self._hashing is None:
            return {"path": path, "size": None, "sha256": None}
        return {
            "path": path,
            "size": self._hashing.size,
            "sha256": self._hashing.digest.hexdigest(),
        }


class _Checked(io.RawIOBase):
    """A decompressing stream whose corruption becomes one `InputFileError` naming the file."""

    def __init__(self, stream: IO[bytes], errors: tuple[type[Exception], ...], name: str) -> None:
        self._stream = stream
        self._errors = errors
        self._name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._stream.read(len(buffer))
        except self._errors as exc:
            raise InputFileError(f"{self._name}: not a valid compressed file: {exc}") from None
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        self._stream.close()
        super().close()


def _open_file(path: Path) -> IO[bytes]:
    """Open the input unbuffered, turning OS errors into one `InputFileError` naming the file."""
    try:
        return open(path, "rb", buffering=0)  # the caller closes it
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory, not an input file") from None
    except PermissionError:
        raise InputFileError(f"{path}: cannot read: permission denied") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
