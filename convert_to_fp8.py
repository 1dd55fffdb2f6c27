#!/usr/bin/env python3
"""Convert a SkyReels-V2 / Wan 2.1 diffusion model to FP8 for ComfyUI.

With no arguments it converts an embedded tiny SkyReels-V2 model in a temp folder (a demo that needs no download).
SRC is a .safetensors file, a folder of shards, or a .pth/.pt file (read with weights_only=True). The default,
per-tensor e4m3fn, loads in ComfyUI's own Load Diffusion Model node; per-channel files need this pack's
Load FP8 SkyReels Model node. Exit status: 0 done, 2 bad input (one line on stderr), 1 verification failed.
"""
import argparse
import contextlib
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quant import CheckpointError, Options, VerifyError, convert  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="?", help="source model: .safetensors file, shard folder or .pth/.pt")
    p.add_argument("dst", nargs="?", help="output .safetensors file (must not exist unless --overwrite)")
    p.add_argument("--model_path", "--model-path", dest="model_path", help="same as SRC (SkyReels-V2 spelling)")
    p.add_argument("--output_path", "--output-path", dest="output_path", help="same as DST (SkyReels-V2 spelling)")
    p.add_argument("--granularity", choices=["tensor", "channel"], default="tensor",
                   help="one scale per weight (default; loads in core ComfyUI) or per output channel (more "
                        "accurate; Load FP8 SkyReels Model only)")
    p.add_argument("--fp8", choices=["e4m3fn", "e5m2"], default="e4m3fn",
                   help="FP8 format (default e4m3fn: more precision; e5m2: more range)")
    p.add_argument("--keep-first-blocks", type=int, default=0, metavar="N",
                   help="keep the first N blocks in bf16 (fp16 for an fp16 source)")
    p.add_argument("--keep-last-blocks", type=int, default=0, metavar="N",
                   help="keep the last N blocks in bf16 (fp16 for an fp16 source)")
    p.add_argument("--verify", action="store_true", help="re-read the output and report per-layer errors")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists (never the source)")
    args = p.parse_args(argv)
    args.src = args.src or args.model_path
    args.dst = args.dst or args.output_path
    args.demo = not args.src and not args.dst
    if not args.demo and not (args.src and args.dst):
        p.error("give SRC and DST (or --model_path and --output_path)")
    return args


def run_demo(args):
    """Convert the embedded tiny model (DF variant: it has every kind of tensor) with --verify."""
    import safetensors.torch
    from quant import tiny

    with tempfile.TemporaryDirectory() as folder:
        args.src = os.path.join(folder, "tiny_skyreels_v2_df_bf16.safetensors")
        args.dst = os.path.join(folder, "tiny_skyreels_v2_df_fp8.safetensors")
        safetensors.torch.save_file(tiny.state_dict(tiny.info("DF")), args.src)
        print("no SRC given: converting the embedded tiny SkyReels-V2 DF model (demo)")
        args.verify = True
        status = main_with(args)
    print("(demo: the temp folder and both files are removed again)")
    return status


class ProgressBar:
    """A one-line bar on a terminal; silent when stderr is a pipe or a log file."""

    def __init__(self, stream=None, width=30):
        # stderr as it is now, not as it was at import (a caller may have redirected it since)
        self.stream, self.width, self.last, self.open = stream or sys.stderr, width, 0.0, False
        self.active = self.stream.isatty()

    def __call__(self, done, total):
        now = time.monotonic()
        if not self.active or (done != total and now - self.last < 0.1):
            return
        self.last = now
        filled = self.width * done // total
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} tensors")
        self.open = done != total
        if not self.open:
            self.stream.write("\n")
        self.stream.flush()

    def close(self):
        if self.open:  # end the bar's line so an error message starts on its own
            self.stream.write("\n")
            self.open = False


def main(argv=None):
    args = parse_args(argv)
    return run_demo(args) if args.demo else main_with(args)


def error(message, code):
    print(f"convert_to_fp8: {message}", file=sys.stderr)
    return code


def main_with(args):
    options = Options(fp8=args.fp8, granularity=args.granularity, keep_first_blocks=args.keep_first_blocks,
                      keep_last_blocks=args.keep_last_blocks)
    try:
        with contextlib.closing(ProgressBar()) as bar:    # closed before an error below is printed
            report = convert(args.src, args.dst, options, overwrite=args.overwrite, verify=args.verify,
                             progress=bar)
    except CheckpointError as e:     # its messages name Convert to FP8's widgets: here they are flags
        return error(re.sub(r"\bkeep_(first|last)_blocks\b", r"--keep-\1-blocks", str(e)), 2)
    except VerifyError as e:
        return error(f"{e} (nothing was written)", 1)
    except OSError as e:  # e.g. a read-only output folder or a full disk
        return error(f"{e.filename or args.dst}: {e.strerror or e}", 2)
    except KeyboardInterrupt:
        return error("interrupted; nothing was written", 130)
    print(report.table())
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(errors="backslashreplace")   # piped on Windows it has the code page's characters only
    sys.exit(main())
