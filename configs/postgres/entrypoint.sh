#!/bin/sh
# Entrypoint of the compose stack's postgres: the image's own docker-entrypoint.sh, after setting
# POSTGRES_USER's password to POSTGRES_PASSWORD. The image applies POSTGRES_PASSWORD only when it
# creates the database, so without this a password changed in .env would lock MLflow out.
# Works with the official postgres image and docker-here.sh's stand-in: both have
# /usr/local/bin/docker-entrypoint.sh, the user postgres, pg_ctl, psql (>= 15) and setpriv.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}" "${POSTGRES_USER:=postgres}"
export PGDATA POSTGRES_USER

set_password() {
  # a server on a private socket only: neither MLflow nor the healthcheck sees it meanwhile
  socket=$(mktemp -d)
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=$socket" -w -s start
  status=0
  # the password from the environment (\getenv): never on a command line or in the log
  printf '%s\n' '\getenv password POSTGRES_PASSWORD' 'ALTER ROLE :"user" PASSWORD :'\''password'\'';' |
    psql -X -q -v ON_ERROR_STOP=1 --no-password --host="$socket" --username="$POSTGRES_USER" \
      --dbname=postgres --set=user="$POSTGRES_USER" || status=$?
  pg_ctl -D "$PGDATA" -m fast -w -s stop
  rmdir "$socket"
  [ "$status" = 0 ] || echo "$0: could not set the password of $POSTGRES_USER" >&2
  return "$status"
}

if [ "${1:-}" = --set-password ]; then set_password; exit; fi
case "${1:-}" in -*) set -- postgres "$@" ;; esac   # `-c x=y` alone means postgres, as in the image
# a first start (no database yet) is left to the image, which sets the password itself
if [ "${1:-}" = postgres ] && [ -s "$PGDATA/PG_VERSION" ] && [ -n "${POSTGRES_PASSWORD:-}" ]; then
  if [ "$(id -u)" = 0 ]; then   # as the image's entrypoint, which runs postgres as postgres
    setpriv --reuid=postgres --regid=postgres --init-groups sh "$0" --set-password
  else
    set_password
  fi
fi
exec docker-entrypoint.sh "$@"
