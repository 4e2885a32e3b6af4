#!/bin/sh
# spawn-fcgi starting the trio-fastcgi application on TCP: spawn-fcgi opens
# the listening socket 127.0.0.1:{{app_port}}, puts it on fd 0 and execs the
# command, which serves in that same process (on fd 0 trio-fastcgi runs no
# supervisor and no extra workers; add --workers N to have them anyway).
# Point the web server at 127.0.0.1:{{app_port}} (e.g. nginx-tcp.conf).
# -n: stay in the foreground (exec, no fork), for a process supervisor; the
# PID of this script is then the application's. Run as root, add
# -u USER -g GROUP to drop privileges.
export PYTHONPATH="{{pythonpath}}"
exec spawn-fcgi -n -a 127.0.0.1 -p {{app_port}} -- \
    "{{python}}" -m trio_fastcgi {{app}} --bind fd://0
