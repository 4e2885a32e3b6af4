#!/bin/sh
# spawn-fcgi starting the trio-fastcgi application on a unix socket:
# spawn-fcgi creates {{app_socket}} (mode 0660 here; -U/-G set its owner for
# the web server's user), puts the listening socket on fd 0 and execs the
# command, which serves in that same process (on fd 0 trio-fastcgi runs no
# supervisor and no extra workers; add --workers N to have them anyway).
# Point the web server at unix:{{app_socket}} (e.g. nginx-unix.conf).
# -n: stay in the foreground (exec, no fork), for a process supervisor; the
# PID of this script is then the application's. Run as root, add
# -u USER -g GROUP to drop privileges.
export PYTHONPATH="{{pythonpath}}"
exec spawn-fcgi -n -s "{{app_socket}}" -M 0660 -- \
    "{{python}}" -m trio_fastcgi {{app}} --bind fd://0
