#!/bin/sh
if [ "$(cat /mode)" = crash ]; then
  echo "$RECESS_VERSION: cannot reach the database, giving up" >&2
  exit 3
fi
exec httpd -f -p 8000 -h /www
