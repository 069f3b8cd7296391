"""python -m studio.demo [--model EXPORT_FOLDER] [--host 127.0.0.1] [--port 7860] …  (or `make serve`)

Serves the model the studio marked as served (through the engine API), or an export folder given with --model,
on 127.0.0.1 by default; another address needs DERMAE_DEMO_TOKEN, which visitors then type as the password of
Gradio's sign-in page. Everything the demo writes lives in one temporary folder, deleted on exit (Ctrl-C or
SIGTERM): Gradio's uploads and outputs, and the example images."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from engine.settings import exposure_problem, is_loopback

TOKEN_ENV = "DERMAE_DEMO_TOKEN"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m studio.demo", description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", type=Path, help="An export folder (model.onnx, model.torchscript.pt, "
                                                   "classifier.json …); default: the engine's served model.")
    parser.add_argument("--workspace", type=Path, help="The engine's workspace (default: DERMAE_WORKSPACE, else "
                                                       "./workspace): the served model's files are inside it.")
    parser.add_argument("--host", default="127.0.0.1", help=f"Address to bind (default 127.0.0.1); any other "
                                                              f"needs {TOKEN_ENV} (the sign-in password).")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--runtime", choices=("onnx", "torchscript"), default=None,
                        help="What runs the model (default: ONNX Runtime, the fastest measured).")
    parser.add_argument("--threads", type=int, default=None,
                        help="Threads of one inference (default: the CPU cores this process may use).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = exposure_problem(args.host, os.environ.get(TOKEN_ENV), "the demo", TOKEN_ENV)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="dermae-demo-"))
    # Gradio reads its upload/cache folder from the environment when it is imported: set it first.
    (scratch / "gradio").mkdir()
    os.environ["GRADIO_TEMP_DIR"] = str(scratch / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # nothing leaves this machine
    # SIGTERM (the launcher, `kill`) stops like Ctrl-C: Gradio closes its server, the finally below deletes the
    # scratch folder.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return serve(args, scratch)
    except KeyboardInterrupt:
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def serve(args: argparse.Namespace, scratch: Path) -> int:
    from PIL import Image

    from engine.data.images import ImageProblem
    from engine.settings import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, Settings
    from studio.demo.app import Demo, build_app
    from studio.demo.examples import ham10000_sample, write_examples
    from studio.demo.model import DEFAULT_RUNTIME, ModelNotFound, ServedModel, files_in_folder, files_of_served_model

    # PIL's own decompression-bomb guard at our import limit (its default is ~89 MP), for every Image.open in
    # this process, Gradio's included: a warning past it (an error inside check_image), an error past twice it.
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    threads = args.threads or len(os.sched_getaffinity(0))
    try:
        files = (files_in_folder(args.model) if args.model
                 else files_of_served_model(Settings.from_env(args.workspace).workspace))
        model = ServedModel(files, args.runtime or DEFAULT_RUNTIME, threads)
        examples = write_examples(scratch / "examples", ham10000_sample())
    except (ModelNotFound, ImageProblem, OSError) as e:
        print(f"cannot start the demo: {e}", file=sys.stderr)
        return 1
    print(f"serving {files.name} ({model.meta['arch']}, {model.image_size}px) through {model.runtime}, "
          f"{threads} thread(s); {len(examples)} examples", file=sys.stderr)
    app = build_app(Demo(model, examples, Path(os.environ["GRADIO_TEMP_DIR"]), threads))
    # One inference at a time: the model already uses every core it is given (`threads`), and two at once on
    # the same cores make OpenMP threads wait on each other, each request many times slower (see the README's
    # note on jobs). An answer takes tens of milliseconds (the model a few, the heatmap most), so a queue of one
    # still serves several a second; past 16 waiting, new requests are told the queue is full rather than waiting
    # ever longer.
    app.queue(default_concurrency_limit=1, max_size=16)
    app.launch(server_name=args.host, server_port=args.port, share=False, auth=sign_in(args.host),
               allowed_paths=[str(scratch / "examples")],  # nothing else of this machine is served
               max_file_size=MAX_IMAGE_BYTES, show_error=False, quiet=False, footer_links=["api"],
               run_history=False, enable_monitoring=False, mcp_server=False, ssr_mode=False, pwa=False)
    return 0


def sign_in(host: str):
    """None on loopback (one person's own machine); elsewhere Gradio's sign-in page, whose password is the token
    (any name: visitors are not accounts, the token only keeps strangers out)."""
    if is_loopback(host):
        return None
    token = os.environ[TOKEN_ENV]
    return lambda _name, password: secrets.compare_digest(password.encode(), token.encode())


if __name__ == "__main__":
    sys.exit(main())
