"""tests/servers.py's S3 server helpers under this module's name (one home for the test servers, this
name kept for modules that import it)."""

from servers import (  # noqa: F401
    ANY_ACCESS_KEY_ID,
    ANY_SECRET_ACCESS_KEY,
    REGION,
    FlakyProxy,
    S3Server,
    flaky_http_proxy,
    moto_s3_server,
    s3_environment,
    s3_fixtures,
)
