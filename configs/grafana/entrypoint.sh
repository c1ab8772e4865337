#!/bin/sh
# Entrypoint of the compose stack's grafana: the image's /run.sh, after setting the admin password
# to GF_SECURITY_ADMIN_PASSWORD. Grafana applies that variable only when it creates its database,
# so without this a password changed in .env would not take effect. GF_PATHS_*: the image's.
set -eu
# a first start (no database yet) is left to Grafana, which sets the password itself
if [ -s "$GF_PATHS_DATA/grafana.db" ] && [ -n "${GF_SECURITY_ADMIN_PASSWORD:-}" ]; then
  # on stdin: never on a command line
  printf '%s\n' "$GF_SECURITY_ADMIN_PASSWORD" |
    grafana cli --homepath "$GF_PATHS_HOME" --config "$GF_PATHS_CONFIG" \
      admin reset-admin-password --password-from-stdin ||
    { echo "$0: could not set the admin password" >&2; exit 1; }
fi
exec /run.sh "$@"
