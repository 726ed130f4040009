"""``fastblt serve``: an OpenAI-compatible HTTP server for one model (see :mod:`fastblt.server`).

    fastblt serve [--model NAME|DIR] [--host 127.0.0.1] [--port 8000]

Binds to the loopback address unless ``--host`` says otherwise. Needs the ``serve`` extra
(``pip install 'fastblt[serve]'``: FastAPI and uvicorn).
"""
from __future__ import annotations

import argparse


def _port(s: str) -> int:
    v = int(s)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {v}")
    return v


_port.__name__ = "port number"  # argparse's error: "invalid port number value: 'x'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="named model (default, blt) or model folder: ours, transformers Blt, or the released layout")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument("--name", default=None, help="model id reported by /v1/models (default: the --model value)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..server import create_app
    except ModuleNotFoundError as e:
        raise RuntimeError(f"fastblt serve needs {e.name}: pip install 'fastblt[serve]'") from None
    import torch

    from ..checkpoint import load

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.model)
    app = create_app(model, model_id=args.name or str(args.model), max_body_bytes=args.max_body_bytes)
    print(f"fastblt serve: {args.model} on http://{args.host}:{args.port}/v1 (POST /v1/completions)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
