#!/usr/bin/env bash
# Install cdc as a systemd service (run as root from a clone of the repository):
#   deploy/install-service.sh            # installs the package, the unit, the user
# then per pipeline:
#   cp my_pipeline.yaml /etc/cdc/shop_to_crm.yaml
#   systemctl enable --now cdc@shop_to_crm
# Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

id cdc >/dev/null 2>&1 || useradd --system --home-dir /var/lib/cdc --create-home \
    --shell /usr/sbin/nologin cdc
install -d -m 0750 -o root -g cdc /etc/cdc
"$PYTHON" -m pip install --quiet --root-user-action=ignore "$ROOT" ${PIP_EXTRA:-}
if [ ! -x /usr/local/bin/cdc ]; then
    echo "cdc was not installed to /usr/local/bin/cdc; adjust ExecStart in the unit" >&2
fi
install -m 0644 "$ROOT/deploy/systemd/cdc@.service" /etc/systemd/system/cdc@.service
install -d /usr/share/doc/cdc
install -m 0644 "$ROOT/docs/operations.md" /usr/share/doc/cdc/operations.md
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "installed: /etc/systemd/system/cdc@.service; put pipelines in /etc/cdc/NAME.yaml"
