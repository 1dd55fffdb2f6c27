"""Model files as the nodes list them: the host's diffusion_models files, plus release folders (shown as "name/")."""
import contextlib
import functools
import os

import folder_paths

from ...quant.checkpoint import CheckpointError, is_release, listed_shards
from ...quant.writer import name_problem, writable

FOLDER = "diffusion_models"
RECIPE = "skyreels_recipe"   # attachment: how to load this MODEL again (Sample Video's parallel workers)


def plain_errors(execute):
    """A node's execute whose CheckpointError reaches ComfyUI as a ValueError: the host heads its error with the
    exception's module, which for a custom node is the path of its folder."""
    @functools.wraps(execute)
    def run(*args, **kwargs):
        try:
            return execute(*args, **kwargs)
        except CheckpointError as e:     # its frames kept: ComfyUI shows the traceback
            raise ValueError(str(e)).with_traceback(e.__traceback__) from None
    return run


def _release_folders():
    """Folders at any depth holding one model as downloaded (`is_release`): {"sub/name/": its shards' names}."""
    found = {}
    for sub in {os.path.dirname(name) for name in folder_paths.get_filename_list(FOLDER)} - {""}:
        for root in folder_paths.get_folder_paths(FOLDER):
            path = os.path.join(root, sub)
            # A diffusers pipeline (model_index.json) holds its diffusion model in transformer/, beside text_encoder/,
            # vae/ ..., which are releases too
            pipeline = os.path.isfile(os.path.join(os.path.dirname(path), "model_index.json"))
            files = os.listdir(path) if os.path.isdir(path) else []
            if is_release(files) and (not pipeline or os.path.basename(sub) == "transformer"):
                found.setdefault(sub.replace(os.sep, "/") + "/", set()).update(_shards(path, files))
    return found


def _shards(folder, files):
    """The shard names the folder's index lists (none where it cannot be read: loading it says why)."""
    names = set()
    for index in [f for f in files if f.endswith(".safetensors.index.json")]:
        with contextlib.suppress(CheckpointError):
            names.update(listed_shards(os.path.join(folder, index)))
    return names


def model_list():
    """Release folders ("name/"), then the host's files but those a release folder holds beside its model: the shards
    its index lists (the folder loads them) and the Wan text encoder, VAE and CLIP .pth files SkyReels-V2's releases
    carry (11 GB of umt5-xxl that ComfyUI does not load here). A one-file release's weights stay listed (workflows
    may name them), and so does a file written into a release folder (e.g. by Convert to FP8)."""
    releases = _release_folders()

    def beside(name):
        folder = os.path.dirname(name).replace(os.sep, "/") + "/"
        return folder in releases and (os.path.basename(name) in releases[folder] or not name.endswith(".safetensors"))
    return sorted(releases) + [f for f in folder_paths.get_filename_list(FOLDER) if not beside(f)]


def resolve(name):
    """Full path of a listed file or shard folder; a clear error if it is not there."""
    if name.endswith("/"):
        # The list shows "name/" for a release in any folder; a plain folder of that name in a folder ComfyUI
        # lists earlier (models/unet, an is_default extra path) is not it.
        found = [p for p in (os.path.join(root, *name.replace("\\", "/").rstrip("/").split("/"))
                             for root in folder_paths.get_folder_paths(FOLDER)) if os.path.isdir(p)]
        if found:
            return next((p for p in found if is_release(os.listdir(p))), found[0])
        raise FileNotFoundError(f"{name}: no such folder in models/{FOLDER}; refresh the node list")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None and "\\" in name and os.sep == "/":   # a workflow saved on Windows names subfolders with '\\'
        path = folder_paths.get_full_path(FOLDER, name.replace("\\", "/"))
    if path is None:
        # ComfyUI lists a link whose target is gone (or a loop of links): refreshing would list it again
        for root in folder_paths.get_folder_paths(FOLDER):
            link = os.path.join(root, *name.replace("\\", "/").split("/"))
            if os.path.islink(link):
                raise FileNotFoundError(f"{name}: a link to {os.path.realpath(link)}, which is not there (or the "
                                        f"links loop); fix or remove the link in models/{FOLDER}")
        raise FileNotFoundError(f"{name}: no such file in models/{FOLDER}; refresh the node list")
    return path


def signature(path):
    """(file, size, mtime_ns) of every file of a model: a file, or each file of a release folder (a shard replaced in
    place, e.g. copied over, leaves the folder's own mtime as it was)."""
    names = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    stats = [(f, os.stat(f)) for f in names if os.path.isfile(f)]
    return tuple((f, st.st_size, st.st_mtime_ns) for f, st in stats)


def output_path(name):
    """Where Convert to FP8 may write `name`: inside the first diffusion_models folder, never above it, and not
    under a name that a folder ComfyUI lists before it holds (the loaders would open that file). Names follow
    Windows' rules on every OS ('/' or '\\' for subfolders), so a workflow saves the same everywhere."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or os.path.isabs(name):   # "\\\\server\\share" too
        problem = "it is an absolute path"
    elif name[1:2] == ":":
        problem = "it names a drive (on Windows, a letter and a colon)"
    else:
        problem = next((p for p in map(name_problem, parts) if p), None)
    if not problem and not name.lower().endswith(".safetensors"):
        parts[-1] += ".safetensors"     # before the checks: the name written is checked (its length too)
        problem = name_problem(parts[-1])
        problem = problem and f"{problem} with the .safetensors added"
    if problem:
        raise ValueError(f"output_name {name!r}: {problem}; give a plain file name such as my_model_fp8.safetensors "
                         f"(it is written to models/{FOLDER})")
    root = os.path.realpath(_output_folder())
    path = os.path.realpath(os.path.join(root, *parts))
    if not _inside(root, path):
        raise ValueError(f"output_name {name!r} leads outside models/{FOLDER} (through a link)")
    for other in folder_paths.get_folder_paths(FOLDER):    # ComfyUI's own order (folder_paths.get_full_path)
        if os.path.realpath(other) == root:
            break
        shadow = os.path.join(other, os.path.relpath(path, root))
        if os.path.isfile(shadow):
            raise ValueError(f"output_name {name!r}: {shadow} has this name in a folder ComfyUI lists first, so the "
                             "loaders would load that file, not this one; choose another name")
    return path


def _inside(root, path):
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:      # Windows: another drive (a junction to D:), never inside
        return False


def shown(path):
    """An output path as the user named it: models/diffusion_models/<subfolders>/<file>."""
    folder = os.path.realpath(_output_folder())
    own = os.path.realpath(os.path.join(folder_paths.models_dir, FOLDER))
    if folder == own:
        return "/".join(["models", FOLDER, *os.path.relpath(path, folder).split(os.sep)])
    # Another folder (extra_model_paths.yaml's is_default; models/unet where models/diffusion_models is missing):
    # its own path, not a models/diffusion_models/... that does not hold the file
    return f"{path} (the first {FOLDER} folder ComfyUI lists that can be written)"


def _output_folder():
    # models/diffusion_models first; ComfyUI also lists the legacy models/unet, which may not exist.
    # a read-only one (a shared network folder marked is_default) is passed over where another can be written
    folders = [f for f in folder_paths.get_folder_paths(FOLDER) if os.path.isdir(f)]
    if not folders:
        raise FileNotFoundError(f"no models/{FOLDER} folder exists; create it first")
    ranked = sorted(folders, key=lambda f: os.path.basename(os.path.normpath(f)) != FOLDER)    # named ones first
    return next((f for f in ranked if writable(f)), ranked[0])      # tried in turn: each try writes a file
