#!/bin/sh
# Fill in the placeholders of nginx-tcp.conf and run nginx in the foreground
# (Ctrl+C stops it). Browsers talk to HTTP_PORT, nginx talks FastCGI to the
# application on APP_PORT. Everything nginx writes goes to ./nginx-run/.
set -eu
HTTP_PORT="${HTTP_PORT:-8080}"
APP_PORT="${APP_PORT:-9000}"
TEMPLATE="${TEMPLATE:-nginx-tcp.conf}"
DIR="$PWD/nginx-run"
mkdir -p "$DIR"
sed -e "s|{{tmp}}|$DIR|g" -e "s|{{port}}|$HTTP_PORT|g" -e "s|{{app_port}}|$APP_PORT|g" \
    "$TEMPLATE" > "$DIR/nginx.conf"
echo "nginx: http://127.0.0.1:$HTTP_PORT/ -> FastCGI 127.0.0.1:$APP_PORT"
exec nginx -e "$DIR/error.log" -c "$DIR/nginx.conf"
