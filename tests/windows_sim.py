"""Make this Linux Python lack what a Windows Python lacks, for the code that runs after `apply()`.

- the Unix-only modules (resource, fcntl, termios, pwd, grp) cannot be imported;
- the `os` functions Windows' `os` does not have are gone (pread, preadv, pwrite, fork, ...);
- `os.symlink` raises OSError, as it does for a user without admin rights or Developer Mode;
- /proc does not exist for the code under `watch` (the pack): Linux branches of other libraries still read it;
- Windows file semantics: a file that is open (in this process, or held by "another program" through `hold`)
  cannot be replaced, renamed or deleted: PermissionError, WinError 32. `os.rename` does not overwrite.
- Windows text files: `open` in text mode with no encoding uses the ANSI code page (cp1252 here, as on a Western
  Windows; Python 3.10 to 3.14 there are not in UTF-8 mode), not UTF-8. A piped stdout has the code page too:
  set PYTHONIOENCODING for the process to simulate that.

This is no Windows: paths still use '/', `os.name` is still 'posix'. It finds the Unix-only calls and the
replace-an-open-file cases, which are what broke the pack for Windows users.
"""
import builtins
import contextlib
import importlib.util
import io
import os
import sys
import weakref

BLOCKED_MODULES = ("resource", "fcntl", "termios", "pwd", "grp")
MISSING_OS = ("pread", "preadv", "pwrite", "pwritev", "fork", "forkpty", "sched_getaffinity", "getuid", "getgid",
              "killpg", "setsid", "getpgid", "getloadavg", "statvfs", "posix_fadvise")

_open_files = weakref.WeakSet()     # file objects opened since apply()
_open_fds = {}                      # fd -> path, for os.open
_held = set()                       # paths "another program" holds (see hold)
_real = {}
_watched = ()                       # folders whose code must not read /proc
ANSI_CODE_PAGE = "cp1252"


def _proc(path, depth=2):
    if isinstance(path, int) or not os.fsdecode(path).startswith("/proc/"):
        return False
    caller = sys._getframe(depth).f_code.co_filename   # installed libraries (a venv in the clone) keep theirs
    return "site-packages" not in caller and any(caller.startswith(root) for root in _watched)


def _norm(path):
    if isinstance(path, int):
        return None
    return os.path.normcase(os.path.realpath(os.fsdecode(path)))


def in_use(path):
    target = _norm(path)
    if target in _held or target in _open_fds.values():
        return True
    return any(not f.closed and _norm(getattr(f, "name", -1)) == target for f in list(_open_files))


def _in_use_error(*paths):
    for p in paths:
        if p is not None and in_use(p):
            e = PermissionError(13, "The process cannot access the file because it is being used by another "
                                    "process", os.fsdecode(p))
            e.winerror = 32              # as Windows' OSError carries it
            raise e


def _open(file, mode="r", *args, **kwargs):
    if _proc(file):
        raise FileNotFoundError(2, "No such file or directory", os.fsdecode(file))
    if "b" not in mode and len(args) > 1 and args[1] in (None, "locale"):    # args: buffering, encoding, ...
        args = (args[0], ANSI_CODE_PAGE, *args[2:])                          # (pathlib passes "locale" so)
    elif "b" not in mode and len(args) < 2 and kwargs.get("encoding") in (None, "locale"):
        kwargs["encoding"] = ANSI_CODE_PAGE
    f = _real["open"](file, mode, *args, **kwargs)
    if not isinstance(file, int):
        _open_files.add(f)
    return f


def _os_open(path, *args, **kwargs):
    if _proc(path):
        raise FileNotFoundError(2, "No such file or directory", os.fsdecode(path))
    fd = _real["os.open"](path, *args, **kwargs)
    _open_fds[fd] = _norm(path)
    return fd


def _os_close(fd):
    _open_fds.pop(fd, None)
    return _real["os.close"](fd)


def _replace(src, dst, *args, **kwargs):
    _in_use_error(src, dst)
    return _real["os.replace"](src, dst, *args, **kwargs)


def _rename(src, dst, *args, **kwargs):
    _in_use_error(src, dst)
    if os.path.exists(dst):
        raise FileExistsError(183, "[WinError 183] Cannot create a file when that file already exists", dst)
    return _real["os.rename"](src, dst, *args, **kwargs)


def _remove(path, *args, **kwargs):
    _in_use_error(path)
    return _real["os.remove"](path, *args, **kwargs)


def _symlink(src, dst, *args, **kwargs):
    raise OSError(22, "[WinError 1314] A required privilege is not held by the client", src, None, dst)


@contextlib.contextmanager
def hold(path):
    """As long as this lasts, `path` is open in "another program" (another ComfyUI, or a model the host mapped)."""
    key = _norm(path)
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)


def apply(watch=(), extra_modules=()):
    """Turn the simulation on for the rest of this process (there is no undo: use a fresh interpreter). `watch`:
    folders whose code sees no /proc."""
    global _watched
    if _real:
        return
    _watched = tuple(os.path.join(os.path.realpath(w), "") for w in watch)
    for name in (*BLOCKED_MODULES, *extra_modules):
        sys.modules[name] = None         # `import name` now raises ModuleNotFoundError
    for name in MISSING_OS:
        if hasattr(os, name):
            delattr(os, name)
    _real.update({"open": builtins.open, "os.open": os.open, "os.close": os.close, "os.replace": os.replace,
                  "os.rename": os.rename, "os.remove": os.remove})
    # Each a staticmethod, callable as the builtins are (Python 3.10+) and, like them, never bound as a method:
    # Python 3.10's pathlib keeps `open = io.open`, `rename = os.rename`, ... as class attributes, where a plain
    # function would take pathlib's accessor for the file.
    builtins.open = io.open = staticmethod(_open)
    os.open, os.close = staticmethod(_os_open), staticmethod(_os_close)
    os.replace, os.rename = staticmethod(_replace), staticmethod(_rename)
    os.remove = os.unlink = staticmethod(_remove)
    os.symlink = staticmethod(_symlink)


class _AfterHost:
    """Import hook: turns the simulation on right after the host's `nodes` module is imported (ComfyUI's main.py
    imports it before it loads custom nodes), watching the custom_nodes folders."""

    def find_spec(self, name, path, target=None):
        if name != "nodes":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            import folder_paths
            apply(watch=folder_paths.get_folder_paths("custom_nodes"), extra_modules=("ray",))

        spec.loader.exec_module = exec_module
        return spec


def apply_after_host_import():
    sys.meta_path.insert(0, _AfterHost())
