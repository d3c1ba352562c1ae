"""tests/servers.py's MLflow server helpers under this module's name (one home for the test servers,
this name kept for modules that import it)."""

from servers import (  # noqa: F401
    STARTUP_TIMEOUT_S,
    free_port,
    is_healthy,
    mlflow_server,
    server_command,
    shared_mlflow_server,
    stop,
)
