"""Write a .safetensors file one tensor at a time, atomically: the header is laid out from the entries first, so
each tensor goes to its offset as soon as it exists (memory stays at one tensor). A temp file in the destination
folder is renamed into place only when complete and fsynced; any error or Ctrl-C removes it, and one left by a killed
process goes at the next write into that folder."""
import contextlib
import errno
import json
import logging
import math
import os
import re
import socket
import time
import uuid

import torch

from .checkpoint import SAFETENSORS_DTYPES, CheckpointError

_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
REPLACE_WAITS = (0.1, 0.2, 0.4, 0.8, 1.5, None)    # seconds between tries of the final rename on Windows (3 s)
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())    # in temp files' names, with the process id

# Windows' rules, checked on every OS: a workflow written on Linux must save on Windows too.
# Device names as CPython 3.13's ntpath.isreserved reads them: with any extension, with spaces before it ("NUL .txt"),
# the console's CONIN$ / CONOUT$, and COM / LPT with a superscript digit.
_RESERVED = re.compile(r"^(con|prn|aux|nul|conin\$|conout\$|(com|lpt)[0-9\u00b9\u00b2\u00b3]) *(\..*)?$", re.IGNORECASE)
_BAD_CHARS = re.compile(r'[<>:"|?*\x00-\x1f]')


def name_problem(name, windows=True):
    """Why `name` (one file name, no folders) cannot be written on every OS (on this one: windows=False), or None."""
    if name in ("", ".", "..") or name.lower() == ".safetensors":
        return "it is empty or a folder reference"
    if len(name) > 200:    # NTFS stops at 255 characters, others at 255 bytes, and the temp file's name is longer
        return "it is too long (at most 200 characters)"     # by about 20
    if len(os.fsencode(name)) > 235:
        return f"it is too long ({len(os.fsencode(name))} bytes as this OS stores it; at most 235)"
    if not windows:
        return None
    if _BAD_CHARS.search(name):
        return 'it has a character Windows does not allow in file names (< > : " | ? * or a control character)'
    if name[-1] in ". ":
        return "it ends in a dot or a space, which Windows drops"
    if _RESERVED.match(name):
        return f"{name.split('.')[0].rstrip(' ')} is a reserved device name on Windows"
    return None


def writable(folder, make_folder=False):
    """Whether a file (or, with make_folder, a folder) can be made in `folder`: tried once, not asked of os.access,
    which says yes to every folder on Windows (Program Files, C:\\ for a user, who may make folders there, not files).
    Not tempfile's: on Windows it takes a refusal for a name in use and tries the next, 2**31 times."""
    probe = os.path.join(folder, f".skyreels-write-test-{uuid.uuid4().hex}")
    try:
        if make_folder:
            os.mkdir(probe)
            os.rmdir(probe)
        else:
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.remove(probe)
        return True
    except OSError:
        return False


class SafetensorsWriter:
    """`entries`: {name: (dtype, shape)}; a context manager: `write(name, tensor)` every entry. `reserve` bytes of
    header room let `set_metadata` record facts known only at the end (measured errors). `check(temp_path)`, if
    given, runs on the complete, fsynced temp file; if it raises, nothing is renamed."""

    def __init__(self, dst, entries, metadata=None, reserve=0, check=None):
        self.dst, self.check = dst, check
        # Larger element sizes first: with every tensor's byte size a multiple of its element size, each tensor
        # then starts at an offset aligned for its dtype.
        header, offset, self._spans = {}, 0, {}
        for name in sorted(entries, key=lambda n: -entries[n][0].itemsize):
            dtype, shape = entries[name]
            size = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._spans[name] = (offset, dtype, tuple(shape))
            offset += size
        self._header = header
        blob = self._header_blob(metadata or {})
        blob += b" " * (reserve + (-(len(blob) + reserve) % 8))
        self._data_start = 8 + len(blob)
        self._file_size = self._data_start + offset
        self._written = set()
        self.tmp = os.path.join(os.path.dirname(os.path.abspath(dst)),
                                f".{os.path.basename(dst)}.{_HOST}-{os.getpid()}.tmp")
        self._f = None
        with self._refusals():
            _remove_stale(dst)
            self._f = open(self.tmp, "wb")
            self._f.write(len(blob).to_bytes(8, "little") + blob)

    @contextlib.contextmanager
    def _refusals(self):
        """A write the disk or the folder refuses, said of the output file (not of the hidden temp file), after the
        temp file is gone."""
        try:
            yield
        except OSError as e:
            self.abort()
            if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG):
                why = f"the disk is full, or the file too large for it (it needs {_size_text(self._file_size)})"
            elif e.errno == errno.ENAMETOOLONG:    # its temp file's name adds this machine's name and the process id
                why = "give it a shorter name"
            else:
                why = "check that you may write to its folder"
            raise CheckpointError(f"{self.dst}: cannot be written ({e.strerror or e}): {why}. Nothing was "
                                  "written") from None

    def _header_blob(self, metadata):
        meta = {"__metadata__": {k: str(v) for k, v in metadata.items()}} if metadata else {}
        return json.dumps({**meta, **self._header}, separators=(",", ":")).encode()

    def set_metadata(self, metadata):
        blob = self._header_blob(metadata)
        room = self._data_start - 8
        if len(blob) > room:
            raise ValueError(f"metadata needs {len(blob)} header bytes, {room} were reserved")
        with self._refusals():
            self._f.seek(8)
            self._f.write(blob + b" " * (room - len(blob)))

    def write(self, name, tensor):
        offset, dtype, shape = self._spans[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: expected {dtype} {shape}, got {tensor.dtype} {tuple(tensor.shape)}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        with self._refusals():
            self._f.seek(self._data_start + offset)
            self._f.write(data.data)
        self._written.add(name)

    def commit(self):
        missing = set(self._spans) - self._written
        if missing:
            raise ValueError(f"{len(missing)} tensors were never written, e.g. {sorted(missing)[0]}")
        with self._refusals():
            self._f.truncate(self._file_size)
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        if self.check:  # e.g. --verify: read the finished temp file back before it replaces anything
            self.check(self.tmp)
        self._replace()
        _fsync_dir(os.path.dirname(os.path.abspath(self.dst)))

    def _replace(self):
        """Windows refuses to rename onto (or from) a file another program holds open: a virus scanner or the search
        indexer reading the new file holds it a moment, so that is tried again for a few seconds."""
        for wait in REPLACE_WAITS:
            try:
                return os.replace(self.tmp, self.dst)
            except FileNotFoundError:
                raise CheckpointError(f"{self.dst}: its temp file {self.tmp} was removed by another program before it "
                                      "was complete; run again") from None
            except PermissionError as e:
                windows = os.name == "nt" or getattr(e, "winerror", None)
                if windows and wait is not None:
                    time.sleep(wait)
                    continue
                if windows:   # an open or mapped file stays put
                    why = ("it is in use, by a model ComfyUI loaded from it (ComfyUI's 'Unload Models and "
                           "Execution Cache' lets it go) or by another program, or it is read-only")
                else:
                    why = "check that you may write the file and its folder"
                raise CheckpointError(f"{self.dst}: cannot be replaced ({e.strerror}): {why}. Nothing was changed: "
                                      "close it and run again, or choose another output name") from None

    def abort(self):
        if self._f is not None:
            with contextlib.suppress(OSError):   # closing flushes, which a full disk refuses too
                self._f.close()
        with contextlib.suppress(OSError):   # what the refusal says counts more than a temp file it keeps
            os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # finally, so a Ctrl-C or a host interrupt does not leave a half-written file either; a no-op after commit.
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.abort()


def _remove_stale(dst):
    """Temp files in `dst`'s folder whose writer was killed mid-write (a closed console window, the OOM killer): no
    finally ran, and each is hidden and up to a model's size. A live writer's stays: its machine and process id are in
    the name, and only this machine's are judged (a models folder may be shared, over a network or by containers)."""
    folder = os.path.dirname(os.path.abspath(dst))
    for name in os.listdir(folder):
        match = re.fullmatch(r"\..+\.safetensors\." + re.escape(_HOST) + r"-(\d+)\.tmp", name, re.IGNORECASE)
        if not match or int(match[1]) == os.getpid() or _alive(int(match[1])):
            continue
        with contextlib.suppress(OSError):
            size = os.path.getsize(os.path.join(folder, name))
            os.remove(os.path.join(folder, name))
            logging.getLogger("skyreels_fp8").warning(
                "%s: removed %s (%s), the temp file of a write that was killed before it finished", folder, name,
                _size_text(size))


def _size_text(size):
    if size >= 2**30:
        return f"{size / 2**30:.1f} GiB"
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def _alive(pid):
    """os.kill(pid, 0) asks on POSIX; on Windows it would end the process, so psutil asks there (ComfyUI brings it;
    without it every writer counts as alive: a file being verified is closed, and Windows would let it go)."""
    if os.name == "nt":
        try:
            import psutil
        except ImportError:
            return True
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True


def _fsync_dir(folder):
    with contextlib.suppress(OSError):   # Windows cannot open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
