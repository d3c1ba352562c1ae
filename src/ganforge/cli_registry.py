"""The commands on the MLflow model registry: ``registry show``, ``promote``, ``verify-model``, ``serve``.

Each calls the platform layer (``errors.require_platform``), which the core installs without.
"""

from __future__ import annotations

import json
import sys

from .errors import require_platform
from .registry_table import format_table


def cmd_registry(args) -> int:
    registry = require_platform("registry", "ganforge registry")
    tracking = require_platform("tracking", "ganforge registry")
    tracking.configure()
    print(format_table(registry.show(args.name)))
    return 0


def cmd_promote(args) -> int:
    registry = require_platform("registry", "ganforge promote")
    tracking = require_platform("tracking", "ganforge promote")
    tracking.configure()
    print(json.dumps(registry.promote_manual(args.name, args.version, force=args.force), indent=2, default=str))
    return 0


def cmd_verify_model(args) -> int:
    registry = require_platform("registry", "ganforge verify-model")
    print(json.dumps(registry.save_verified(args.model, args.out), indent=2))
    return 0


def cmd_serve(args) -> int:
    serving = require_platform("serving", "ganforge serve")
    from .stop import Stopped

    try:
        return serving.serve(args.model, host=args.host, port=args.port, workers=args.workers)
    except (Stopped, KeyboardInterrupt) as e:  # a server's normal end: not "run the command again"
        what = str(e) if isinstance(e, Stopped) else "interrupted (Ctrl-C)"
        print(f"ganforge serve: {what}; the server is stopped and its model copy removed", file=sys.stderr)
        return e.exit_status if isinstance(e, Stopped) else 130
