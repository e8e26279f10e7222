#!/bin/sh
# The official rabbitmq image's entrypoint is on PATH as docker-entrypoint.sh; compose.yaml's
# cluster nodes call it after installing the Erlang cookie. Here the node already runs as the
# rabbitmq user with its configuration in place: nothing to do but run the command.
exec "$@"
