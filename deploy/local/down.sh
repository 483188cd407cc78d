#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stop what up.sh started (pid files in $TG_DATA/run). Idempotent.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

stop_service moto "$MOTO_BIN"
stop_service tansu "$TANSU_BIN"
stop_service kafka "$TG_AK_DATA"
