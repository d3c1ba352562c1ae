"""The container image every component runs in (images/Dockerfile: ganforge + kfp installed).

One setting for all components: GANFORGE_IMAGE at compile time. kfp.local's
SubprocessRunner ignores it and runs the component in this Python environment.
"""

import os

IMAGE = os.environ.get("GANFORGE_IMAGE", "localhost:5001/ganforge/ganforge-gpu:0.1.0")
